"""Usage records measured per update, billed at a versioned price; admin keys (issue 12).

usage_records gains the measured work (seconds per phase, device, KV token-steps of the run and
of a full cache, kept entries per update, allocated peak, entries the policy scored), the price
it was billed at (price id and device-hour price), the billed device seconds and the
counterfactual's method. api_keys gains is_admin (reports across tenants); tenants gain
shadow_rate, and shadow_runs holds the full-cache reruns of sampled jobs (service/jobs/shadow.py).

Existing rows are kept and converted:
  - their counterfactual multiplied the run's own seconds by its memory share, which is no
    method at all: full_cache_cost_micro_usd becomes NULL (no saving claimed) and
    counterfactual_method stays NULL; the price they were billed at becomes 'legacy';
  - rows of the `full` policy carry no budget and their own cost as counterfactual ('self',
    a zero saving), as new rows do.
Downgrade drops the new columns and puts the cost back where the counterfactual is NULL (the
old column was NOT NULL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 23:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

NEW_COLUMNS = (
    ("seconds_prefill", lambda: sa.Column("seconds_prefill", sa.Float(), nullable=False,
                                          server_default="0")),
    ("seconds_decode", lambda: sa.Column("seconds_decode", sa.Float(), nullable=False,
                                         server_default="0")),
    ("seconds_policy", lambda: sa.Column("seconds_policy", sa.Float(), nullable=False,
                                         server_default="0")),
    ("device", lambda: sa.Column("device", sa.String(length=100), nullable=False,
                                 server_default="unknown")),
    ("kv_token_steps", lambda: sa.Column("kv_token_steps", sa.Float(), nullable=True)),
    ("kv_token_steps_full", lambda: sa.Column("kv_token_steps_full", sa.Float(), nullable=True)),
    ("kv_updates", lambda: sa.Column("kv_updates", JSON, nullable=True)),
    ("kv_bytes_allocated_peak", lambda: sa.Column("kv_bytes_allocated_peak", sa.BigInteger(),
                                                  nullable=True)),
    ("policy_entries_scored", lambda: sa.Column("policy_entries_scored", sa.Float(),
                                                nullable=True)),
    ("price_id", lambda: sa.Column("price_id", sa.String(length=64), nullable=True)),
    ("device_hour_micro_usd", lambda: sa.Column("device_hour_micro_usd", sa.BigInteger(),
                                                nullable=True)),
    ("billed_device_seconds", lambda: sa.Column("billed_device_seconds", sa.Float(),
                                                nullable=True)),
    ("counterfactual_method", lambda: sa.Column("counterfactual_method", sa.String(length=200),
                                                nullable=True)),
    ("counterfactual_estimated", lambda: sa.Column("counterfactual_estimated", sa.Boolean(),
                                                   nullable=False, server_default=sa.false())),
)


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        for _, column in NEW_COLUMNS:
            batch.add_column(column())
        batch.alter_column("full_cache_cost_micro_usd", existing_type=sa.BigInteger(),
                           nullable=True)
    op.execute("UPDATE usage_records SET price_id = 'legacy', "
               "billed_device_seconds = seconds, full_cache_cost_micro_usd = NULL")
    op.execute("UPDATE usage_records SET budget_unit = NULL, budget_value = NULL, "
               "full_cache_cost_micro_usd = cost_micro_usd, counterfactual_method = 'self' "
               "WHERE policy = 'full'")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("shadow_rate", sa.Float(), nullable=False, server_default="0"))
    op.create_table(
        "shadow_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seconds_run", sa.Float(), nullable=True),
        sa.Column("seconds_full", sa.Float(), nullable=True),
        sa.Column("cost_run_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("cost_full_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("kv_token_steps_run", sa.Float(), nullable=True),
        sa.Column("kv_token_steps_full", sa.Float(), nullable=True),
        sa.Column("answers_agree", sa.Boolean(), nullable=True),
        sa.Column("answers_full", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_shadow_runs_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_shadow_runs_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_runs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_shadow_runs_job_id")),
    )
    op.create_index("ix_shadow_runs_tenant_created", "shadow_runs", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_runs_tenant_created", table_name="shadow_runs")
    op.drop_table("shadow_runs")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("shadow_rate")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("is_admin")
    op.execute("UPDATE usage_records SET full_cache_cost_micro_usd = cost_micro_usd "
               "WHERE full_cache_cost_micro_usd IS NULL")
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("full_cache_cost_micro_usd", existing_type=sa.BigInteger(),
                           nullable=False)
        for name, _ in reversed(NEW_COLUMNS):
            batch.drop_column(name)
