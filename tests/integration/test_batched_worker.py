"""Several jobs in one batch on the real stack (PostgreSQL, Redis, a real Celery worker running
the real model, beat running the sweeper), issue 22 item 3: with NAMM_WORKER__BATCH_MAX_JOBS=4
one worker runs several jobs at once; SIGKILL of its child while they run: every job runs again
and ends done, each with one result and one usage record (nothing lost, nothing doubled)."""

from __future__ import annotations

import signal
import time

import httpx
import psutil
import pytest
from conftest import base_env, start_stack
from flows import QUESTION, SHORT_DOCUMENT, check_stored_once, wait_for
from reliability_stack import own_pg_database

pytestmark = [pytest.mark.services, pytest.mark.model, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def batching_stack(redis_broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    redis_url, prefix = redis_broker
    with own_pg_database("batching") as pg_url:  # no other module's queued jobs join its batches
        env = base_env(tmp, NAMM_DATABASE__URL=pg_url, NAMM_BROKER__URL=redis_url,
                       NAMM_BROKER__KEY_PREFIX=prefix + "batching:", NAMM_WORKER__BATCH_MAX_JOBS="4")
        stack = start_stack(env, tmp / "logs", with_beat=True)
        try:
            yield stack
        finally:
            stack.procs.stop()


def _submit_four(client) -> list[str]:
    ids = []
    for i in range(4):
        r = client.post("/v1/jobs", json={"document": SHORT_DOCUMENT + f" Note {i}.", "questions": [QUESTION],
                                          "policy": "surprisal", "budget": 0.5, "max_new_tokens": 16})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def _running(client, ids) -> int:
    return sum(client.get(f"/v1/jobs/{i}").json()["status"] == "running" for i in ids)


def test_one_worker_runs_several_jobs_at_once_and_survives_sigkill(batching_stack):
    stack = batching_stack
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.keys[0]}, timeout=30) as c:
        ids = _submit_four(c)
        deadline, most = time.monotonic() + 180, 0
        while time.monotonic() < deadline and most < 2:
            most = max(most, _running(c, ids))
            time.sleep(0.05)
        assert most >= 2, ("one worker never ran two jobs at once", stack.procs.log_tail("worker", 60))
        children = psutil.Process(stack.procs.procs["worker"].pid).children(recursive=True)
        assert len(children) == 1
        children[0].send_signal(signal.SIGKILL)  # the batch dies mid-run
        jobs = [wait_for(c, i, timeout_s=300) for i in ids]
    for job in jobs:
        assert job["status"] == "done", (job, stack.procs.log_tail("worker", 80))
        assert "4711" in job["result"]["text"]
        check_stored_once(job["id"])
    assert max(j["attempts"] for j in jobs) == 2  # the killed batch's jobs ran again

    # and with nothing killed: a fresh batch of four, all done once, each attempt the first
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.keys[0]}, timeout=30) as c:
        jobs = [wait_for(c, i, timeout_s=300) for i in _submit_four(c)]
    for job in jobs:
        assert job["status"] == "done" and job["attempts"] == 1 and "4711" in job["result"]["text"]
        check_stored_once(job["id"])
