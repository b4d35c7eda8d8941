"""Alembic on the real PostgreSQL: upgrade, models match, downgrade, upgrade again; JSONB used."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.migrate import downgrade, upgrade
from service.models import Base

pytestmark = pytest.mark.services


def test_upgrade_downgrade_postgres(pg_url):
    engine = create_engine(pg_url)
    try:
        upgrade(pg_url)
        downgrade(pg_url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(pg_url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], diff
            kind = conn.execute(text(
                "select data_type from information_schema.columns "
                "where table_name='results' and column_name='stats'")).scalar()
        assert kind == "jsonb"
    finally:
        engine.dispose()
