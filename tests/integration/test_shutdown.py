"""Issue 13: SIGTERM to the API process stops it and every process it started (uvicorn
servers, LitServe inference workers, the multiprocessing manager) within the drain timeout;
before, they ran on, still accepting jobs. A real process tree on the embedded default."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
from conftest import base_env, free_port

DRAIN_S = 5.0


def test_sigterm_stops_the_api_and_all_its_children(tmp_path):
    from service.dev.processes import ServiceProcesses, api_command

    env = base_env(tmp_path, NAMM_DATABASE__URL=f"sqlite:///{tmp_path / 'namm.db'}",
                   NAMM_BROKER__URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                   NAMM_API__DRAIN_TIMEOUT_S=str(DRAIN_S))
    os.environ.update(env)
    from service.core.migrate import upgrade
    from service.core.state import reset_process_state

    reset_process_state()
    upgrade(env["NAMM_DATABASE__URL"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = ServiceProcesses(env=env, log_dir=tmp_path / "logs")
    api = procs.start("api", api_command(port, api_servers=2))
    tree: list[psutil.Process] = []
    try:
        procs.wait_healthy(url, timeout_s=120)
        tree = psutil.Process(api.pid).children(recursive=True)
        # two uvicorn servers, one inference worker, the manager (and helpers of their own)
        assert len(tree) >= 4, tree
        os.kill(api.pid, signal.SIGTERM)  # the API process alone, as `docker stop` does
        started = time.monotonic()
        api.wait(timeout=DRAIN_S + 30)
        _, alive = psutil.wait_procs(tree, timeout=max(1.0, DRAIN_S + 30 - (time.monotonic()
                                                                             - started)))
        stopped_after = time.monotonic() - started
        assert not alive, f"still running after SIGTERM: {alive}\n{procs.log_tail('api')}"
        print(f"\nSIGTERM: the API and its {len(tree)} children stopped in {stopped_after:.1f} s")
        try:
            httpx.get(f"{url}/health", timeout=2)
            raise AssertionError("the API still answers after SIGTERM")
        except httpx.TransportError:
            pass
    finally:
        procs.stop()
        for child in tree:  # had the test failed: no orphans left behind
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
