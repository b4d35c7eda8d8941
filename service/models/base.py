"""What every table shares: the declarative base (one metadata, stable constraint names), the
JSON column type, ids, UTC moments and the stored form of a budget."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Float, MetaData, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from namm.spec import Budget

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")

# Stable constraint names so migrations can drop/alter them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """A stored moment made timezone-aware: SQLite returns naive datetimes; all stored are UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# A budget is stored as its unit and its amount (namm.spec.Budget), never as a bare number whose
# type would have to say what it means.
BUDGET_CHECK = ("(budget_unit IS NULL AND budget_value IS NULL)"
                " OR (budget_unit = 'fraction' AND budget_value > 0 AND budget_value <= 1)"
                " OR (budget_unit = 'tokens' AND budget_value >= 1)")


class HasBudget:
    budget_unit: Mapped[str | None] = mapped_column(String(8))  # 'fraction' | 'tokens' | NULL
    budget_value: Mapped[float | None] = mapped_column(Float)

    @property
    def budget(self) -> Budget | None:
        if self.budget_unit is None:
            return None
        return Budget(self.budget_unit, self.budget_value)  # type: ignore[arg-type]

    @budget.setter
    def budget(self, budget: Budget | None) -> None:
        self.budget_unit, self.budget_value = budget_columns(budget).values()


def budget_columns(budget: Budget | None) -> dict[str, Any]:
    """The two columns that store `budget`."""
    if budget is None:
        return {"budget_unit": None, "budget_value": None}
    return {"budget_unit": budget.unit, "budget_value": budget.value}
