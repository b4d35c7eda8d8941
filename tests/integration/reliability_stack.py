"""Starting the API alone (no worker) for the isolation tests of issue 13: submissions stay
queued, so nothing loads the model."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Stack, free_port


def start_api_only(env: dict[str, str], log_dir: Path) -> Stack:
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope
    from service.core.migrate import upgrade
    from service.core.queue import queue_depths
    from service.core.state import reset_process_state
    from service.dev.processes import ServiceProcesses, api_command

    os.environ.update(env)
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
