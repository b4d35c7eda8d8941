"""A batch's ingestion heartbeat (issue 11): the beat tick resends the ingestion of a queued
batch only when no worker has touched it lately, so a long clone is not cloned again by every
tick (workers/batches.py `tick`, BatchRepository.stalled).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("ingest_heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("ingest_heartbeat_at")
