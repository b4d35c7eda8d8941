"""The production configuration: real PostgreSQL and Redis, a real Celery worker process and
the LitServe API as subprocesses, the real default model."""

import time

import httpx
import pytest

from flows import (
    check_metrics,
    check_rerun_is_noop,
    check_stored_once,
    check_tenant_isolation,
    stored_document_journey,
    submit_and_read_answer,
    wait_for,
    wait_for_worker_log,
)

pytestmark = [pytest.mark.services, pytest.mark.model, pytest.mark.timeout(900)]


def test_submit_run_store_serve(pg_redis_stack):
    job = submit_and_read_answer(pg_redis_stack)
    check_stored_once(job["id"])
    check_tenant_isolation(pg_redis_stack, job["id"])
    check_rerun_is_noop(pg_redis_stack, job)
    check_metrics(pg_redis_stack)


def test_stored_document_journey(pg_redis_stack):
    stored_document_journey(pg_redis_stack)


def test_document_longer_than_context_fails_clearly(pg_redis_stack):
    # ~12k tokens with the full cache: more than SmolLM2's 8k context, and no truncation asked
    long_document = " ".join(f"Line {i}: the shipment left the depot on time." for i in range(1400))
    with httpx.Client(base_url=pg_redis_stack.url,
                      headers={"X-API-Key": pg_redis_stack.keys[0]}, timeout=30) as c:
        r = c.post("/v1/jobs", json={"document": long_document, "questions": ["When?"],
                                     "policy": "full", "max_new_tokens": 4})
        assert r.status_code == 202, r.text
        job = wait_for(c, r.json()["id"])
    assert job["status"] == "failed"
    assert "context" in job["error"] and "truncate" in job["error"]


def test_cancel_a_queued_job(pg_redis_stack):
    with httpx.Client(base_url=pg_redis_stack.url,
                      headers={"X-API-Key": pg_redis_stack.keys[0]}, timeout=30) as c:
        # the one worker (one job at a time) is busy with a job of some seconds while the second
        # is submitted and cancelled: the second cannot be claimed first (a 4-token job could
        # finish before the cancel arrived, and the second then ran)
        busy = " ".join(f"Line {i}: the shipment left the depot on time." for i in range(150))
        ids = [c.post("/v1/jobs", json={"document": busy, "max_new_tokens": 32}).json()["id"]]
        deadline = time.monotonic() + 300
        while c.get(f"/v1/jobs/{ids[0]}").json()["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        ids.append(c.post("/v1/jobs", json={"document": "Short text.", "max_new_tokens": 4}).json()["id"])
        cancelled = c.post(f"/v1/jobs/{ids[1]}/cancel").json()
        assert cancelled["status"] == "cancelled"
        first = wait_for(c, ids[0])
        assert first["status"] == "done"
        # the cancelled job's message reaches the worker, which leaves the job alone
        wait_for_worker_log(pg_redis_stack, f"job {ids[1]} not run: finished")
        second = c.get(f"/v1/jobs/{ids[1]}").json()
    assert second["status"] == "cancelled" and second["result"] is None
    assert second["attempts"] == 0 and second["started_at"] is None
