"""Alembic on the real PostgreSQL: upgrade, models match, downgrade, upgrade again; JSONB used;
the budget-unit migration converts existing rows."""

import uuid

import pytest
from migration_checks import check_budget_migration, check_round_trip, check_shipped_memory_rename
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.services


@pytest.fixture
def fresh_pg(pg_url):
    """An empty database of its own next to the session's."""
    import psycopg

    base, _, _ = pg_url.rpartition("/")
    name = f"namm_mig_{uuid.uuid4().hex[:8]}"
    admin_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_downgrade_postgres(fresh_pg):
    check_round_trip(fresh_pg)
    engine = create_engine(fresh_pg)
    try:
        with engine.connect() as conn:
            kind = conn.execute(text(
                "select data_type from information_schema.columns "
                "where table_name='results' and column_name='stats'")).scalar()
        assert kind == "jsonb"
    finally:
        engine.dispose()


def test_budget_unit_migration_postgres(fresh_pg):
    check_budget_migration(fresh_pg)


def test_shipped_memory_rename_postgres(fresh_pg):
    check_shipped_memory_rename(fresh_pg)
