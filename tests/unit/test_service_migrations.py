"""Alembic on SQLite: upgrade, the models match the migrations, downgrade, upgrade again; the
budget-unit migration converts existing rows. (The same on the real PostgreSQL lives in
tests/integration/test_migrations_postgres.py.)"""

from migration_checks import check_budget_migration, check_round_trip, check_shipped_memory_rename

from service.core.migrate import alembic_config


def test_upgrade_downgrade_sqlite(tmp_path):
    check_round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_budget_unit_migration_sqlite(tmp_path):
    check_budget_migration(f"sqlite:///{tmp_path / 'b.db'}")


def test_shipped_memory_rename_sqlite(tmp_path):
    check_shipped_memory_rename(f"sqlite:///{tmp_path / 'r.db'}")


def test_single_head():
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1
