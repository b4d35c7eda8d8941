"""Repository batches and schedules (issue 11).

Reserved in the chain so that the three pieces of work can land in any order; the owner fills
in upgrade() and downgrade().

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
