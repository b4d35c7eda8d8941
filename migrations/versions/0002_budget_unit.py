"""Budgets keep their unit: jobs.budget and usage_records.budget become budget_unit + budget_value.

Existing rows are converted the way the worker read them until now: a value above 1 was a
token count, anything else a kept fraction (so a stored 1.0 stays "fraction 1": the old column
could not tell one token from "keep everything", and the worker ran it as the latter).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("jobs", "usage_records")
BUDGET_CHECK = ("(budget_unit IS NULL AND budget_value IS NULL)"
                " OR (budget_unit = 'fraction' AND budget_value > 0 AND budget_value <= 1)"
                " OR (budget_unit = 'tokens' AND budget_value >= 1)")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("budget_unit", sa.String(length=8), nullable=True))
            batch.alter_column("budget", new_column_name="budget_value",
                               existing_type=sa.Float(), existing_nullable=True)
        op.execute(
            f"UPDATE {table} SET "
            "budget_unit = CASE WHEN budget_value > 1 THEN 'tokens' ELSE 'fraction' END, "
            "budget_value = CASE WHEN budget_value > 1 THEN ROUND(budget_value) ELSE budget_value END "
            "WHERE budget_value IS NOT NULL")
        with op.batch_alter_table(table) as batch:
            batch.create_check_constraint(op.f(f"ck_{table}_budget"), BUDGET_CHECK)


def downgrade() -> None:
    # back to one number: tokens as the number itself, fractions as they are (a 1-token budget
    # becomes 1.0, which the old code read as "keep everything": the old form cannot say more)
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"ck_{table}_budget"), type_="check")
            batch.drop_column("budget_unit")
            batch.alter_column("budget_value", new_column_name="budget",
                               existing_type=sa.Float(), existing_nullable=True)
