"""Fault tests of issue 13 with the real stack (PostgreSQL, a Redis of the test's own, a real
Celery worker running the real model, beat running the sweeper at its default intervals):
each asserts nothing lost and nothing doubled, and that the job ran again within a minute.

- the worker's child is SIGKILLed mid-job: the parent hands the message back
  (reject_on_worker_lost); the job is claimed again once its heartbeat is stale;
- the worker's parent is SIGKILLed mid-job (its child dies with it, PR_SET_PDEATHSIG) and a
  new worker starts: Redis would return the unacked message only after hours, so the sweeper
  queues the job again once its heartbeat is stale;
- Redis is stopped with `shutdown nosave` while jobs are queued and running and more are
  submitted, then started again empty: the sweeper sends every queued job whose message is
  gone (service/core/broker_scan.py);
- SIGTERM to the worker mid-job: Celery's warm shutdown finishes the job first.
Recovery times are printed (docs/reliability.md records them); the bound asserted is the
issue's: running again within 60 s of the fault.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime

import httpx
import psutil
import pytest
from conftest import base_env, free_port, start_stack, unavailable, use_env
from flows import QUESTION, SHORT_DOCUMENT, check_stored_once, wait_for
from reliability_stack import own_pg_database

pytestmark = [pytest.mark.services, pytest.mark.model]

RECOVERY_BOUND_S = 60.0
BODY = {"document": SHORT_DOCUMENT, "questions": [QUESTION], "policy": "surprisal",
        "budget": 0.5, "max_new_tokens": 16}


class OwnRedis:
    """A redis-server on its own port, that the test may stop and start."""

    def __init__(self, tmp):
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def shutdown_nosave(self) -> None:
        import redis

        try:
            redis.Redis.from_url(self.url).shutdown(nosave=True)
        except redis.ConnectionError:  # the server closes the connection as it exits
            pass
        assert self.proc is not None
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    try:
        subprocess.run(["redis-server", "--version"], check=True, capture_output=True)
    except Exception as exc:
        unavailable("redis-server (to start a Redis of the test's own)", exc)
    own = OwnRedis(tmp)
    own.start()
    # a database of its own too: its sweeper would otherwise resend every job other modules
    # left queued in the session's database (their messages are in another Redis), and the
    # one worker would run them all before these tests' jobs
    with own_pg_database("faults") as pg_url:
        env = base_env(tmp, NAMM_DATABASE__URL=pg_url, NAMM_BROKER__URL=own.url,
                       NAMM_BROKER__KEY_PREFIX="")
        stack = start_stack(env, tmp / "logs", with_beat=True)
        stack.redis = own
        try:
            yield stack
        finally:
            stack.procs.stop()
            if own.proc and own.proc.poll() is None:
                own.proc.kill()


def _client(stack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.keys[0]}, timeout=30)


def _submit(client) -> str:
    r = client.post("/v1/jobs", json=BODY)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _wait_running(client, job_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get(f"/v1/jobs/{job_id}").json()["status"] == "running":
            return
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never ran")


def _worker_children(stack) -> list[psutil.Process]:
    return psutil.Process(stack.procs.procs["worker"].pid).children(recursive=True)


def _restarted_after(job: dict, fault_at: float) -> float:
    """Seconds from the fault to the job's last claim (started_at of its last attempt)."""
    started = datetime.fromisoformat(job["started_at"]).timestamp()
    return started - fault_at


def _check_done_once(stack, job: dict, attempts: int) -> None:
    assert job["status"] == "done", (job, stack.procs.log_tail("worker", 80))
    assert job["attempts"] == attempts and "4711" in job["result"]["text"]
    check_stored_once(job["id"])


def test_sigkill_of_the_worker_child_mid_job(faults):
    with _client(faults) as client:
        job_id = _submit(client)
        _wait_running(client, job_id)
        children = _worker_children(faults)
        assert len(children) == 1
        children[0].send_signal(signal.SIGKILL)
        killed_at = time.time()
        job = wait_for(client, job_id, timeout_s=240)
    recovery = _restarted_after(job, killed_at)
    print(f"\nchild SIGKILL: running again after {recovery:.1f} s, done after "
          f"{datetime.fromisoformat(job['finished_at']).timestamp() - killed_at:.1f} s")
    _check_done_once(faults, job, attempts=2)
    assert 0 < recovery < RECOVERY_BOUND_S


def test_sigkill_of_the_worker_parent_mid_job(faults):
    from service.dev.processes import worker_command

    with _client(faults) as client:
        job_id = _submit(client)
        _wait_running(client, job_id)
        parent = faults.procs.procs["worker"]
        children = _worker_children(faults)
        os.kill(parent.pid, signal.SIGKILL)
        killed_at = time.time()
        parent.wait(timeout=10)
        psutil.wait_procs(children, timeout=10)  # PR_SET_PDEATHSIG: the child died with it
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
        faults.procs.start("worker", worker_command())  # what a supervisor does
        job = wait_for(client, job_id, timeout_s=240)
    recovery = _restarted_after(job, killed_at)
    print(f"\nparent SIGKILL: running again after {recovery:.1f} s, done after "
          f"{datetime.fromisoformat(job['finished_at']).timestamp() - killed_at:.1f} s")
    _check_done_once(faults, job, attempts=2)
    assert 0 < recovery < RECOVERY_BOUND_S


def test_redis_restart_without_saving(faults):
    with _client(faults) as client:
        before = [_submit(client) for _ in range(3)]
        _wait_running(client, before[0])
        faults.redis.shutdown_nosave()
        stopped_at = time.time()
        during = [_submit(client) for _ in range(2)]  # stored; their enqueue fails
        time.sleep(3)
        faults.redis.start()
        restarted_at = time.time()
        jobs = [wait_for(client, job_id, timeout_s=300) for job_id in before + during]
    for job in jobs:
        assert job["status"] == "done", (job.get("error"), job, faults.procs.log_tail("worker", 80))
        assert "4711" in job["result"]["text"]
        check_stored_once(job["id"])
    last_start = max(datetime.fromisoformat(j["started_at"]).timestamp() for j in jobs)
    print(f"\nRedis shutdown nosave for {restarted_at - stopped_at:.1f} s: 5 jobs done once; "
          f"the last one started {last_start - restarted_at:.1f} s after the restart, all done "
          f"{max(datetime.fromisoformat(j['finished_at']).timestamp() for j in jobs) - restarted_at:.1f}"
          " s after it")


def test_sigterm_lets_the_worker_finish_its_job(faults):
    """SIGTERM (what a deployment sends first) is Celery's warm shutdown: the running job
    finishes and is stored once, then the worker exits; nothing is requeued."""
    from service.dev.processes import worker_command

    if faults.procs.procs["worker"].poll() is not None:
        faults.procs.start("worker", worker_command())
    with _client(faults) as client:
        job_id = _submit(client)
        _wait_running(client, job_id)
        worker = faults.procs.procs["worker"]
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=240)
        job = client.get(f"/v1/jobs/{job_id}").json()
    _check_done_once(faults, job, attempts=1)


def test_pg_terminate_backend_storm_every_request_answered(tmp_path):
    """Issue 23, item 8: every API connection killed every 20 ms while 6 clients submit, list
    and read jobs: every request gets an answer (503 with a message at worst) and the API log
    has no "response already started" (a second response tried after the first began)."""
    import threading

    import psycopg
    from conftest import PG_HOST, PG_PORT

    from service.dev.processes import ServiceProcesses, api_command

    with own_pg_database("storm") as db_url:
        env = base_env(tmp_path, NAMM_DATABASE__URL=db_url, NAMM_API__LOG_LEVEL="info",
                       NAMM_BROKER__URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}")
        use_env(env)
        from service.api.keys import get_or_create_tenant, issue_key
        from service.core.db import session_scope
        from service.core.migrate import upgrade
        from service.core.state import reset_process_state

        reset_process_state()
        upgrade(db_url)
        with session_scope() as s:
            key = issue_key(s, get_or_create_tenant(s, "tenant-storm")).raw_key
        reset_process_state()  # the storm kills this process's connections too
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs = ServiceProcesses(env=env, log_dir=tmp_path / "logs")
        procs.start("api", api_command(port, api_servers=2))
        dbname = db_url.rsplit("/", 1)[1]
        stop = threading.Event()
        killed = [0]
        answers: list = []

        def storm() -> None:
            with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=dbname,
                                 autocommit=True) as conn:
                while not stop.is_set():
                    killed[0] += len(conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND pid <> pg_backend_pid()").fetchall())
                    time.sleep(0.02)

        def client(n: int) -> None:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as c:
                job_id = None
                while not stop.is_set():
                    try:
                        if n % 3 == 0:
                            r = c.post("/v1/jobs", json={"document": f"storm {n}"})
                            if r.status_code == 202:
                                job_id = r.json()["id"]
                        elif n % 3 == 1 or job_id is None:
                            r = c.get("/v1/jobs?limit=5")
                        else:
                            r = c.get(f"/v1/jobs/{job_id}")
                        answers.append((r.status_code, r.text[:200]))
                    except httpx.TransportError as exc:
                        answers.append((None, f"{type(exc).__name__}: {exc}"))

        try:
            procs.wait_healthy(url, timeout_s=120)
            threads = [threading.Thread(target=storm, daemon=True)] + [
                threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
            for t in threads:
                t.start()
            time.sleep(8)
            stop.set()
            for t in threads:
                t.join(timeout=40)
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as c:
                after = [c.get("/v1/jobs?limit=5").status_code for _ in range(5)]
            log = (tmp_path / "logs" / "api.log").read_text(errors="replace") if (
                tmp_path / "logs" / "api.log").exists() else procs.log_tail("api", 400)
        finally:
            procs.stop()
            reset_process_state()
        codes = [a[0] for a in answers]
        print(f"\npg_terminate_backend storm: {killed[0]} connections killed under "
              f"{len(codes)} requests: { {c: codes.count(c) for c in set(codes)} }")
        assert killed[0] > 0
        assert None not in codes, [a for a in answers if a[0] is None][:5]
        assert set(codes) <= {200, 202, 503}, [a for a in answers if a[0] not in (200, 202, 503)][:5]
        assert all("detail" in a[1] for a in answers if a[0] == 503)
        assert "already started" not in log, log[-3000:]
        assert after == [200] * 5
