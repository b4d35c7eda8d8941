"""Database engine and sessions, built lazily on first use in each process.

Lazy because LitServe and Celery fork: a connection pool created before a fork must not be
shared with the child, so the child builds its own (see _forget_engine_in_child).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.core.settings import get_settings

_lock = threading.Lock()
_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits for a writer instead of
    # failing with "database is locked"; SQLite leaves foreign keys off unless asked.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, echo: bool = False) -> Engine:
    """An engine for `url`; SQLite files get WAL and a busy timeout, their folder is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
    )


def get_engine() -> Engine:
    global _engine, _session_factory
    if _engine is None:
        with _lock:
            if _engine is None:
                db = get_settings().database
                _engine = make_engine(
                    db.url.get_secret_value(),
                    pool_size=db.pool_size,
                    max_overflow=db.max_overflow,
                    echo=db.echo,
                )
                _session_factory = sessionmaker(bind=_engine, expire_on_commit=False)
    return _engine


def session_factory() -> sessionmaker[Session]:
    get_engine()
    assert _session_factory is not None
    return _session_factory


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_engine() -> None:
    """Drop this process's engine (tests switch databases; settings may have changed)."""
    global _engine, _session_factory
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _session_factory = None


def _forget_engine_in_child() -> None:
    # The parent's pooled connections belong to the parent: forget them without closing.
    global _engine, _session_factory
    if _engine is not None:
        _engine.dispose(close=False)
    _engine = None
    _session_factory = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engine_in_child)
