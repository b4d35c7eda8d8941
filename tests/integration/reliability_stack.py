"""Helpers of the issue 13 integration tests: the API alone (no worker: submissions stay
queued, nothing loads the model), and a PostgreSQL database of a module's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import Stack, free_port, use_env


def start_api_only(env: dict[str, str], log_dir: Path) -> Stack:
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope
    from service.core.migrate import upgrade
    from service.core.queue import queue_depths
    from service.core.state import reset_process_state
    from service.dev.processes import ServiceProcesses, api_command

    use_env(env)
    reset_process_state()
    upgrade(env["NAMM_DATABASE__URL"])
    queue_depths()
    with session_scope() as s:
        keys = (issue_key(s, get_or_create_tenant(s, "tenant-a")).raw_key,
                issue_key(s, get_or_create_tenant(s, "tenant-b")).raw_key)
    port = free_port()
    procs = ServiceProcesses(env=env, log_dir=log_dir)
    try:
        procs.start("api", api_command(port, api_servers=1))
        procs.wait_healthy(f"http://127.0.0.1:{port}", timeout_s=120)
    except Exception:
        procs.stop()
        raise
    return Stack(f"http://127.0.0.1:{port}", keys, procs, env)


@contextmanager
def own_pg_database(tag: str) -> Iterator[str]:
    """A PostgreSQL database for one test module, dropped after it. The session's database
    is shared: jobs these modules leave queued there would be picked up by the next module's
    worker (or its sweeper would resend them), so they keep to their own."""
    import uuid

    from conftest import PG_HOST, PG_PORT, _pg_admin_connect, unavailable

    try:
        admin, user = _pg_admin_connect()
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    name = f"namm_test_{tag}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            from service.core.state import reset_process_state

            reset_process_state()  # close pooled connections before the drop
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
