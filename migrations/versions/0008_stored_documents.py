"""Stored documents (issue 20): a document read once, its memory kept for later questions.
The `stored_documents` table, `jobs.memory_id` (a question answered from one) and two usage
columns for the reuse saving (document tokens not re-read, and the full-cache cost of re-reading
them). And retention maps (issue 21): `jobs.retention` (asked for) and `results.retention`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUDGET_CHECK = ("(budget_unit IS NULL AND budget_value IS NULL)"
                " OR (budget_unit = 'fraction' AND budget_value > 0 AND budget_value <= 1)"
                " OR (budget_unit = 'tokens' AND budget_value >= 1)")


def upgrade() -> None:
    op.create_table(
        "stored_documents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.String(length=36), nullable=False),
        sa.Column("read_job_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("policy", sa.String(length=32), nullable=False),
        sa.Column("n_up", sa.Integer(), nullable=False),
        sa.Column("truncate", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.Column("kept_fraction", sa.Float(), nullable=True),
        sa.Column("bytes_stored", sa.BigInteger(), nullable=False),
        sa.Column("full_cache_bytes", sa.BigInteger(), nullable=True),
        sa.Column("storage_key", sa.String(length=200), nullable=True),
        sa.Column("read_kv_token_steps_full", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("budget_unit", sa.String(length=8), nullable=True),
        sa.Column("budget_value", sa.Float(), nullable=True),
        sa.CheckConstraint(BUDGET_CHECK, name=op.f("ck_stored_documents_budget")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name=op.f("fk_stored_documents_tenant_id_tenants")),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE",
                                name=op.f("fk_stored_documents_document_id_documents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_documents")),
    )
    op.create_index(op.f("ix_stored_documents_tenant_id"), "stored_documents", ["tenant_id"])
    op.create_index(op.f("ix_stored_documents_status"), "stored_documents", ["status"])
    op.create_index("ix_stored_documents_tenant_created", "stored_documents", ["tenant_id", "created_at"])
    op.create_index("ix_stored_documents_last_used", "stored_documents", ["last_used_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("memory_id", sa.String(length=36), nullable=True))
        batch.create_index(op.f("ix_jobs_memory_id"), ["memory_id"])
        batch.create_foreign_key(op.f("fk_jobs_memory_id_stored_documents"), "stored_documents",
                                 ["memory_id"], ["id"], ondelete="SET NULL")
    # retention maps (issue 21): asked for per job, stored with its result
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retention", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("retention", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                                   nullable=True))
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("tokens_not_reread", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("reread_cost_micro_usd", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("retention")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retention")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("reread_cost_micro_usd")
        batch.drop_column("tokens_not_reread")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_memory_id_stored_documents"), type_="foreignkey")
        batch.drop_index(op.f("ix_jobs_memory_id"))
        batch.drop_column("memory_id")
    op.drop_table("stored_documents")
