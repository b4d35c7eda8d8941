"""Shadow runs end to end on PostgreSQL + Redis with the real worker and model: a tenant
sampling every job gets its NAMM job rerun with the full cache (queue gpu, priority 9), the
rerun is measured and stored apart, and the cost report shows it as measured, to that tenant
only."""

import time

import httpx
import pytest
from sqlalchemy import select

from flows import QUESTION, SHORT_DOCUMENT, wait_for

pytestmark = [pytest.mark.model, pytest.mark.services, pytest.mark.timeout(900)]


def test_sampled_job_gets_a_measured_full_cache_rerun(pg_redis_stack):
    from service.core.db import session_scope
    from service.jobs.shadow import set_rate
    from service.models import ShadowRun

    stack = pg_redis_stack
    with session_scope() as s:
        set_rate(s, "tenant-a", 1.0)
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.keys[0]}, timeout=30) as c:
        r = c.post("/v1/jobs", json={"document": SHORT_DOCUMENT, "questions": [QUESTION],
                                     "policy": "surprisal", "budget": 0.5, "max_new_tokens": 16})
        assert r.status_code == 202, r.text
        job = wait_for(c, r.json()["id"])
        assert job["status"] == "done", stack.procs.log_tail("worker")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with session_scope() as s:
                row = s.scalar(select(ShadowRun).where(ShadowRun.job_id == job["id"]))
                if row is not None and row.status in ("done", "failed"):
                    break
            time.sleep(0.5)
        assert row is not None and row.status == "done", (row and row.error,
                                                          stack.procs.log_tail("worker"))
        usage = job["usage"]
        assert row.answers_full and row.seconds_full > 0 and row.seconds_run > 0
        assert row.kv_token_steps_run == usage["kv_token_steps"]
        assert row.kv_token_steps_full > row.kv_token_steps_run
        assert row.cost_run_micro_usd == usage["cost_micro_usd"] and row.cost_full_micro_usd > 0
        assert row.answers_agree == (
            [" ".join(a.split()).lower() for a in row.answers_full]
            == [" ".join(a.split()).lower() for a in job["result"]["answers"]])
        shadow = c.get("/v1/reports/cost").json()["shadow"]
        assert shadow["measured"] and shadow["runs"] == 1 and shadow["done"] == 1
        assert shadow["cost_full_micro_usd"] == row.cost_full_micro_usd
    other = httpx.get(f"{stack.url}/v1/reports/cost", headers={"X-API-Key": stack.keys[1]})
    assert other.json()["shadow"]["runs"] == 0
