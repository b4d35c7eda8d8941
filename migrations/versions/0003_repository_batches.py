"""Repository batches and schedules (issue 11): schedules, batches, their uploads, files and
skipped files, and jobs.batch_id (the per-file jobs of a batch; usage by batch joins on it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BUDGET_CHECK = ("(budget_unit IS NULL AND budget_value IS NULL)"
                " OR (budget_unit = 'fraction' AND budget_value > 0 AND budget_value <= 1)"
                " OR (budget_unit = 'tokens' AND budget_value >= 1)")


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _budget() -> list[sa.Column]:
    return [sa.Column("budget_unit", sa.String(length=8), nullable=True),
            sa.Column("budget_value", sa.Float(), nullable=True)]


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("cron", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("source", JSON, nullable=False),
        sa.Column("tasks", JSON, nullable=False),
        sa.Column("questions", JSON, nullable=False),
        sa.Column("policy", sa.String(length=32), nullable=False),
        sa.Column("max_new_tokens", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _when("last_run_at"), _when("next_run_at"),
        sa.Column("running_batch_id", sa.String(length=36), nullable=True),
        _when("created_at", False), _when("updated_at", False),
        *_budget(),
        sa.CheckConstraint(BUDGET_CHECK, name=op.f("ck_schedules_budget")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name=op.f("fk_schedules_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
    )
    op.create_index(op.f("ix_schedules_tenant_id"), "schedules", ["tenant_id"])
    op.create_index("ix_schedules_enabled_next_run", "schedules", ["enabled", "next_run_at"])

    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.String(length=36), nullable=True),
        sa.Column("source", JSON, nullable=False),
        sa.Column("tasks", JSON, nullable=False),
        sa.Column("questions", JSON, nullable=False),
        sa.Column("policy", sa.String(length=32), nullable=False),
        sa.Column("max_new_tokens", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("files_total", sa.Integer(), nullable=False),
        sa.Column("files_done", sa.Integer(), nullable=False),
        sa.Column("files_failed", sa.Integer(), nullable=False),
        sa.Column("files_skipped", sa.Integer(), nullable=False),
        sa.Column("tokens_read", sa.BigInteger(), nullable=False),
        sa.Column("overview", sa.Text(), nullable=True),
        sa.Column("overview_job_id", sa.String(length=36), nullable=True),
        _when("created_at", False), _when("started_at"), _when("finished_at"),
        *_budget(),
        sa.CheckConstraint(BUDGET_CHECK, name=op.f("ck_batches_budget")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name=op.f("fk_batches_tenant_id_tenants")),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"], ondelete="SET NULL",
                                name=op.f("fk_batches_schedule_id_schedules")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_tenant_id"), "batches", ["tenant_id"])
    op.create_index(op.f("ix_batches_schedule_id"), "batches", ["schedule_id"])
    op.create_index(op.f("ix_batches_status"), "batches", ["status"])
    op.create_index("ix_batches_tenant_created", "batches", ["tenant_id", "created_at"])

    op.create_table(
        "batch_uploads",
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("filename", sa.String(length=500), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE",
                                name=op.f("fk_batch_uploads_batch_id_batches")),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_batch_uploads")),
    )

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(length=36), nullable=True))
        batch.create_index(op.f("ix_jobs_batch_id"), ["batch_id"])
        batch.create_foreign_key(op.f("fk_jobs_batch_id_batches"), "batches", ["batch_id"],
                                 ["id"], ondelete="SET NULL")

    op.create_table(
        "batch_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("language", sa.String(length=32), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        _when("finished_at"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE",
                                name=op.f("fk_batch_files_batch_id_batches")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL",
                                name=op.f("fk_batch_files_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_files")),
        sa.UniqueConstraint("batch_id", "path", name="uq_batch_files_batch_path"),
        sa.UniqueConstraint("job_id", name=op.f("uq_batch_files_job_id")),
    )
    op.create_index(op.f("ix_batch_files_batch_id"), "batch_files", ["batch_id"])

    op.create_table(
        "batch_skipped_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE",
                                name=op.f("fk_batch_skipped_files_batch_id_batches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_skipped_files")),
    )
    op.create_index(op.f("ix_batch_skipped_files_batch_id"), "batch_skipped_files", ["batch_id"])


def downgrade() -> None:
    op.drop_table("batch_skipped_files")
    op.drop_table("batch_files")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_batch_id_batches"), type_="foreignkey")
        batch.drop_index(op.f("ix_jobs_batch_id"))
        batch.drop_column("batch_id")
    op.drop_table("batch_uploads")
    op.drop_table("batches")
    op.drop_table("schedules")
