"""Fixtures for the integration tests: the real PostgreSQL and Redis on this machine, and the
service's real processes (API, Celery worker, beat) started as subprocesses.

A missing service skips the tests locally, but fails them when CI=true: in CI they must run.
Each test session gets its own PostgreSQL database and its own Redis key prefix.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_HOST = os.environ.get("NAMM_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NAMM_TEST_PG_PORT", "5432"))
PG_ADMIN_DB = os.environ.get("NAMM_TEST_PG_DB", "test")
REDIS_URL = os.environ.get("NAMM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# NAMM_* settings a stack put into this process's environment (start_stack): the next stack
# starts without them, so one module's settings (a batching worker, say) never reach another's
SET_BY_STACKS: set[str] = set()


def unavailable(what: str, error: Exception) -> None:
    message = f"{what} unreachable: {type(error).__name__}: {error}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: service tests must run, not skip)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_admin_connect():
    import psycopg

    last: Exception | None = None
    for user in ("postgres", "root", os.environ.get("USER") or "postgres"):
        try:
            return psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname=PG_ADMIN_DB,
                                   autocommit=True, connect_timeout=5), user
        except Exception as exc:  # try the next role
            last = exc
    raise last  # type: ignore[misc]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    try:
        admin, user = _pg_admin_connect()
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    name = f"namm_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            from service.core.state import reset_process_state

            reset_process_state()  # close pooled connections before the drop
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_broker() -> tuple[str, str]:
    """The real Redis, and a key prefix no other session uses."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        unavailable("Redis", exc)
    prefix = f"namm-test-{uuid.uuid4().hex[:8]}:"
    yield REDIS_URL, prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


class Stack:
    """A running service: URL, two tenants' keys, and the processes' logs."""

    def __init__(self, url: str, keys: tuple[str, str], procs, env: dict[str, str]):
        self.url, self.keys, self.procs, self.env = url, keys, procs, env


def use_env(env: dict[str, str]) -> None:
    """This process talks to the stack of `env` (base_env's): an earlier stack's settings go."""
    for name in SET_BY_STACKS - env.keys():
        os.environ.pop(name, None)
    SET_BY_STACKS.update(n for n in env if n.startswith("NAMM_") and os.environ.get(n) != env[n])
    os.environ.update(env)


def start_stack(env: dict[str, str], log_dir: Path, with_beat: bool = False) -> Stack:
    from service.core.migrate import upgrade
    from service.dev.processes import ServiceProcesses, api_command, beat_command, worker_commands
    from service.core.state import reset_process_state

    use_env(env)
    reset_process_state()
    upgrade(env["NAMM_DATABASE__URL"])
    from service.core.db import session_scope
    from service.core.queue import queue_depths
    from service.api.keys import get_or_create_tenant, issue_key

    queue_depths()  # create the broker's queues/tables before processes race to
    with session_scope() as s:
        keys = (issue_key(s, get_or_create_tenant(s, "tenant-a")).raw_key,
                issue_key(s, get_or_create_tenant(s, "tenant-b")).raw_key)
    port = free_port()
    procs = ServiceProcesses(env=env, log_dir=log_dir)
    try:
        for name, argv in worker_commands().items():  # gpu and cpu, as `make run` does
            procs.start(name, argv)
        if with_beat:
            procs.start("beat", beat_command(log_dir / "celerybeat-schedule"))
        procs.start("api", api_command(port, api_servers=1))
        procs.wait_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
    except Exception:
        procs.stop()
        raise
    return Stack(f"http://127.0.0.1:{port}", keys, procs, env)


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {n: v for n, v in os.environ.items() if n not in SET_BY_STACKS}
    env.update({
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        "NAMM_API__LOG_LEVEL": "warning",
        "NAMM_WORKER__PROGRESS_INTERVAL_S": "0",
        "NAMM_ENVIRONMENT": "test",
        "NAMM_MEMORIES__STORE_URL": str(tmp / "memories"),
    })
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def pg_redis_stack(pg_url, redis_broker, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("pg-stack")
    redis_url, prefix = redis_broker
    env = base_env(tmp, NAMM_DATABASE__URL=pg_url, NAMM_BROKER__URL=redis_url,
                   NAMM_BROKER__KEY_PREFIX=prefix)
    stack = start_stack(env, tmp / "logs")
    yield stack
    stack.procs.stop()


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory) -> Iterator[Stack]:
    """The `make run` configuration: SQLite (WAL) + kombu's SQLAlchemy broker, with beat."""
    tmp = tmp_path_factory.mktemp("embedded-stack")
    env = base_env(tmp, NAMM_DATABASE__URL=f"sqlite:///{tmp / 'namm.db'}",
                   NAMM_BROKER__URL=f"sqla+sqlite:///{tmp / 'broker.db'}")
    stack = start_stack(env, tmp / "logs", with_beat=True)
    yield stack
    stack.procs.stop()
