"""Alembic environment: the URL comes from the service settings unless the caller set one."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.core.db import make_engine
from service.models import Base
from service.core.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    # service.migrate and tests pass the URL as an attribute (never through the .ini, whose
    # interpolation would mangle '%' in passwords).
    return config.attributes.get("database_url") or get_settings().database.url.get_secret_value()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # batch mode copies a table, drops the old one and renames the copy: with foreign
                # keys on (service.core.db turns them on), that drop would cascade-delete every
                # row that references the table (a job's result and usage record)
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            # batch mode: SQLite cannot ALTER most things, Alembic copies the table instead
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
