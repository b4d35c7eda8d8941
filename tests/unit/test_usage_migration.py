"""Migration 0004 on SQLite: old usage rows lose their unfounded counterfactual, the full
policy's rows their budget; downgrade restores the NOT NULL column. (PostgreSQL:
tests/integration/test_usage_migration_postgres.py.)"""

from usage_checks import check_usage_migration


def test_usage_migration_sqlite(tmp_path):
    check_usage_migration(f"sqlite:///{tmp_path / 'u.db'}")
