"""Migration 0004 on the real PostgreSQL (the same checks as on SQLite)."""

import pytest
from test_migrations_postgres import fresh_pg  # noqa: F401 (the fixture: an empty database)
from usage_checks import check_usage_migration

pytestmark = pytest.mark.services


def test_usage_migration_postgres(fresh_pg):
    check_usage_migration(fresh_pg)
