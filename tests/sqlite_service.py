"""The service's embedded configuration for in-process tests: a SQLite database and kombu's
SQLAlchemy broker in a temporary folder, migrated, with the process's cached settings, engine
and stores rebuilt for it (and again when the test module is done)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def sqlite_service(tmp: Path, **env: str | None) -> Iterator[Path]:
    """`env`: more NAMM_* settings for the module (name=value; None: unset)."""
    from service.core import migrate
    from service.core.state import reset_process_state

    mp = pytest.MonkeyPatch()
    mp.setenv("NAMM_DATABASE__URL", f"sqlite:///{tmp / 'namm.db'}")
    mp.setenv("NAMM_BROKER__URL", f"sqla+sqlite:///{tmp / 'broker.db'}")
    mp.setenv("NAMM_MEMORIES__STORE_URL", str(tmp / "memories"))
    mp.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    for name, value in env.items():
        if value is None:
            mp.delenv(name, raising=False)
        else:
            mp.setenv(name, value)
    reset_process_state()
    try:
        migrate.upgrade()
        yield tmp
    finally:
        mp.undo()
        reset_process_state()


@contextmanager
def in_process_api(default_key: str | None = None):
    """The whole API in this process (LitServe app and its real inference worker) behind a
    TestClient; `default_key`: sent as X-API-Key unless a request sets its own."""
    from fastapi.testclient import TestClient
    from litserve.utils import wrap_litserve_start

    from service.api.app import build_server

    with wrap_litserve_start(build_server()) as server, TestClient(server.app) as client:
        if default_key is not None:
            client.headers["X-API-Key"] = default_key
        yield client
