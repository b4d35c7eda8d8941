"""Issue 13: SIGTERM to the API process stops it and every process it started (uvicorn
servers, LitServe inference workers, the multiprocessing manager) within the drain timeout;
before, they ran on, still accepting jobs. A real process tree on the embedded default."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
from conftest import base_env, free_port, use_env

DRAIN_S = 5.0


def test_sigterm_stops_the_api_and_all_its_children(tmp_path):
    from service.dev.processes import ServiceProcesses, api_command

    env = base_env(tmp_path, NAMM_DATABASE__URL=f"sqlite:///{tmp_path / 'namm.db'}",
                   NAMM_BROKER__URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                   NAMM_API__DRAIN_TIMEOUT_S=str(DRAIN_S))
    use_env(env)
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


# Issue 23, item 7: clients hammering POST /v1/jobs through a SIGTERM see only answers.
HAMMER_CLIENTS = 8
NOTICE_S = 1.0


def _hammer(url: str, key: str, stop_at: float, out: list) -> None:
    """POST jobs on one keep-alive client until the listener refuses the connection."""
    from flows import QUESTION, SHORT_DOCUMENT

    body = {"document": SHORT_DOCUMENT, "questions": [QUESTION], "policy": "surprisal",
            "budget": 0.5, "max_new_tokens": 16}
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
        while time.monotonic() < stop_at:
            sent = time.monotonic()
            try:
                r = client.post("/v1/jobs", json=body)
            except httpx.ConnectError:
                out.append((sent, "refused", None))
                return  # the listener is closed: what a client of a stopped server sees
            except httpx.TransportError as exc:  # a reset or a request left unanswered
                out.append((sent, f"no answer: {type(exc).__name__}: {exc}", None))
                continue
            job = r.json()["id"] if r.status_code == 202 else None
            out.append((sent, r.status_code, job))


def test_sigterm_under_load_answers_every_request_and_stops_within_the_drain_time(tmp_path):
    import threading

    from reliability_stack import own_pg_database
    from service.dev.processes import ServiceProcesses, api_command

    with own_pg_database("sigterm") as db_url:
        env = base_env(tmp_path, NAMM_DATABASE__URL=db_url,
                       NAMM_BROKER__URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                       NAMM_API__DRAIN_TIMEOUT_S=str(DRAIN_S),
                       NAMM_API__DRAIN_NOTICE_S=str(NOTICE_S))
        use_env(env)
        from service.api.keys import get_or_create_tenant, issue_key
        from service.core.db import session_scope
        from service.core.migrate import upgrade
        from service.core.state import reset_process_state

        reset_process_state()
        upgrade(db_url)
        with session_scope() as s:
            key = issue_key(s, get_or_create_tenant(s, "tenant-sigterm")).raw_key
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs = ServiceProcesses(env=env, log_dir=tmp_path / "logs")
        api = procs.start("api", api_command(port, api_servers=2))
        try:
            procs.wait_healthy(url, timeout_s=120)
            results: list[list] = [[] for _ in range(HAMMER_CLIENTS)]
            stop_at = time.monotonic() + DRAIN_S + 30
            threads = [threading.Thread(target=_hammer, args=(url, key, stop_at, out))
                       for out in results]
            for t in threads:
                t.start()
            time.sleep(2.0)  # under load
            killed_at = time.monotonic()
            os.kill(api.pid, signal.SIGTERM)
            api.wait(timeout=DRAIN_S + 30)
            stopped_after = time.monotonic() - killed_at
            for t in threads:
                t.join(timeout=60)
            log = procs.log_tail("api", 80)
        finally:
            procs.stop()
        outcomes = [o for out in results for o in out]
        unanswered = [o for o in outcomes if isinstance(o[1], str) and o[1] != "refused"]
        accepted = [o for o in outcomes if o[1] == 202]
        late = [o for o in accepted if o[0] > killed_at + NOTICE_S]
        other = [o for o in outcomes if isinstance(o[1], int) and o[1] not in (202, 503)]
        refused = sum(1 for o in outcomes if o[1] == "refused")
        print(f"\nSIGTERM under load: {len(accepted)} x 202 ({len(late)} sent after the notice),"
              f" {sum(1 for o in outcomes if o[1] == 503)} x 503, {refused} refused,"
              f" {len(unanswered)} unanswered; API exited in {stopped_after:.1f} s"
              f" (drain {DRAIN_S} s)")
        assert not unanswered, (f"{[(round(o[0] - killed_at, 3), o[1]) for o in unanswered[:8]]}"
                                f"\n{log}")
        assert not other, other[:5]
        assert not late, f"202 for requests sent after the notice: {late[:5]}"
        assert refused == HAMMER_CLIENTS, "every client ends on a refused connection"
        assert stopped_after <= DRAIN_S, f"{stopped_after:.1f} s\n{log}"
        assert "response already started" not in log.lower(), log
        # every 202 is a committed row
        from sqlalchemy import text

        ids = {o[2] for o in accepted}
        assert len(ids) == len(accepted) and accepted
        with session_scope() as s:
            stored = {str(r[0]) for r in s.execute(
                text("SELECT id FROM jobs WHERE id::text = ANY(:ids)"),
                {"ids": list(ids)})}
        assert stored == {str(i) for i in ids}, ids - stored
        reset_process_state()  # close pooled connections before the database is dropped
