"""Whether a database is there and migrated, checked without creating anything.

Read-only tools (`python -m service.reports`) call this first: opening a missing SQLite file
would create an empty one (and its folder) and end in "no such table" far from the cause.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from service.core.settings import safe_url

# tables a read of usage needs; alembic_version says the schema was migrated at all
REQUIRED_TABLES = ("alembic_version", "usage_records", "jobs", "tenants")
HOW_TO_SET = ("set NAMM_DATABASE__URL (e.g. sqlite:////abs/path/var/namm.db or "
              "postgresql+psycopg://user:pass@host/db), or run from the folder whose .env sets it")


def readable_database_problem(url: str) -> str | None:
    """None when `url` names an existing, migrated database; else one line that names the URL
    (password masked), what is wrong and what to set. Never creates a file or folder."""
    shown = safe_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        return f"database URL {shown!r} is not a valid URL; {HOW_TO_SET}"
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return f"database {shown} is in memory and holds no data; {HOW_TO_SET}"
        path = Path(parsed.database).resolve()
        if not path.is_file():
            return f"no database file at {path} (from {shown}); {HOW_TO_SET}"
        # mode=ro: even the check cannot write to (or create) the file
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            missing = [t for t in REQUIRED_TABLES if not inspect(conn).has_table(t)]
    except SQLAlchemyError as exc:
        return (f"cannot open database {shown}: {type(exc.orig or exc).__name__}; {HOW_TO_SET}")
    finally:
        engine.dispose()
    if missing:
        return (f"database {shown} is not migrated (missing {', '.join(missing)}): run "
                "`python -m service.migrate` against it, or " + HOW_TO_SET)
    return None
