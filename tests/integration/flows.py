"""The end-to-end flow both stacks must pass: submit over HTTP, the worker runs the real default
model, the result and usage record are stored and served."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import func, select

# ~220 tokens: long enough for NAMM to evict at 0.5 (it never cuts texts under its min_keep of
# 128 tokens), short enough for a quick job; NAMM at 0.5 keeps 60% and answers right
SHORT_DOCUMENT = (
    "Meeting notes. The team met on Tuesday to plan the product launch. "
    "The launch date is the 14th of March. The vault code is 4711. "
    "Marketing will prepare the announcement and sales will brief the partners. "
    "The design group showed two options for the landing page; the second one, with the larger "
    "product photo, was preferred by most of the room. Support asked for a frequently asked "
    "questions page before launch day, and engineering agreed to freeze new features two weeks "
    "before the date so that testing can finish. The budget for the launch event stays as "
    "planned, with catering booked for eighty guests. Legal will review the press release on "
    "Friday. The next meeting is on Thursday at ten, in the large room on the second floor, and "
    "everyone should bring the updated task list. Travel for the regional partners is booked, "
    "and the hotel confirmed the rooms for the night before the event. The photographer will "
    "arrive one hour early to set up the lights in the hall."
)
# asked as "What is the vault code?" the default model answers "a code that is used to track and
# manage the vault code" even with the full cache; naming the answer's form fixes it
QUESTION = "What is the vault code? Answer with the number only."


def wait_for(client: httpx.Client, job_id: str, timeout_s: float = 420.0) -> dict:
    deadline = time.monotonic() + timeout_s
    seen_progress = set()
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen_progress.add(job["progress"])
        if job["status"] in ("done", "failed", "cancelled"):
            job["_seen_progress"] = sorted(seen_progress)
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s} s: {job}")


def submit_and_read_answer(stack) -> dict:
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.keys[0]}, timeout=30) as c:
        r = c.post("/v1/jobs", json={"document": SHORT_DOCUMENT, "questions": [QUESTION],
                                     "policy": "surprisal", "budget": 0.5, "max_new_tokens": 16})
        assert r.status_code == 202, r.text
        job = wait_for(c, r.json()["id"])
    assert job["status"] == "done", (job, stack.procs.log_tail("worker"))
    assert job["attempts"] == 1 and job["progress"] == 1.0
    assert job["result"]["text"].strip()
    # "The vault code is 4711." (the code alone is 4 tokens, the sentence 10: 8 new tokens would
    # cut it at "471")
    assert "4711" in job["result"]["text"]
    usage = job["usage"]
    assert usage["model"].startswith("SmolLM2")
    assert usage["tokens_in"] > 40 and 1 <= usage["tokens_out"] <= 16
    assert 0 < usage["kv_kept_fraction"] <= 1 and usage["kv_bytes_peak"] > 0
    assert usage["kv_bytes_full_peak"] > 0 and usage["seconds"] > 0
    assert usage["cost_micro_usd"] > 0
    # billed by work at the rate measured for SmolLM2 on CPU; the full cache is an estimate by
    # that rate over its exact token-steps (a short document may well show a loss: no sign check)
    assert usage["device"] == "cpu" and usage["price_id"] == "default"
    assert usage["counterfactual_method"] == "kv_token_steps_rate:SmolLM2-135M-Instruct:cpu"
    assert usage["counterfactual_estimated"] is True
    assert 0 < usage["kv_token_steps"] < usage["kv_token_steps_full"]
    assert usage["kv_updates"] and usage["kv_bytes_peak"] < usage["kv_bytes_full_peak"]
    assert usage["saved_micro_usd"] == usage["full_cache_cost_micro_usd"] - usage["cost_micro_usd"]
    return job


def check_stored_once(job_id: str) -> None:
    from service.core.db import session_scope
    from service.models import Result, UsageRecord

    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) == 1
        assert s.scalar(select(func.count()).select_from(UsageRecord)
                        .where(UsageRecord.job_id == job_id)) == 1


def check_tenant_isolation(stack, job_id: str) -> None:
    r = httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers={"X-API-Key": stack.keys[1]})
    assert r.status_code == 404


def wait_for_worker_log(stack, line: str, timeout_s: float = 120.0) -> None:
    """Until the worker's log says `line` (the worker reports each task's outcome there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if line in stack.procs.log_tail("worker", 400):
            return
        time.sleep(0.2)
    raise AssertionError(f"the worker never logged {line!r}:\n" + stack.procs.log_tail("worker"))


def check_rerun_is_noop(stack, job: dict) -> None:
    """Deliver the task again for the finished job: nothing changes."""
    from service.core.queue import enqueue_job

    assert enqueue_job(job["id"])
    wait_for_worker_log(stack, f"job {job['id']} not run: finished")
    again = httpx.get(f"{stack.url}/v1/jobs/{job['id']}",
                      headers={"X-API-Key": stack.keys[0]}).json()
    assert again["attempts"] == job["attempts"] and again["finished_at"] == job["finished_at"]
    assert again["result"] == job["result"]
    check_stored_once(job["id"])


def check_metrics(stack) -> None:
    text = httpx.get(f"{stack.url}/metrics").text
    assert 'namm_jobs{status="done"}' in text
    assert 'namm_tokens_processed_total{direction="in"}' in text
    assert "namm_kv_kept_fraction_count 0.0" not in text


def stored_document_journey(stack) -> None:
    """Store a document, ask while it is being read (the question waits, then runs), ask again
    once it is ready: both answered from the memory without reading the document again; the
    read billed once; then delete it."""
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.keys[0]}, timeout=30) as c:
        r = c.post("/v1/documents", json={"document": SHORT_DOCUMENT, "policy": "surprisal", "budget": 0.5})
        assert r.status_code == 202, r.text
        doc = r.json()
        early = c.post(doc["questions_url"], json={"questions": [QUESTION], "max_new_tokens": 16})
        assert early.status_code == 202, early.text
        read = wait_for(c, doc["read_job"].rsplit("/", 1)[1])
        assert read["status"] == "done", (read, stack.procs.log_tail("worker"))
        assert read["usage"]["tokens_in"] > 150 and read["usage"]["tokens_out"] == 0
        first = wait_for(c, early.json()["id"])
        assert first["status"] == "done", (first, stack.procs.log_tail("worker"))
        ready = c.get(f"/v1/documents/{doc['id']}").json()
        assert ready["status"] == "ready" and ready["tokens"] == read["usage"]["tokens_in"]
        assert 0 < ready["bytes_stored"] < ready["full_cache_bytes"]
        later = c.post(doc["questions_url"], json={"questions": [QUESTION], "max_new_tokens": 16})
        second = wait_for(c, later.json()["id"])
        assert second["status"] == "done", second
        for answered in (first, second):
            assert "4711" in answered["result"]["text"], answered["result"]
            usage = answered["usage"]
            assert usage["tokens_not_reread"] == ready["tokens"]  # the document was not read again
            assert usage["tokens_in"] < 60 and usage["reread_cost_micro_usd"] > usage["cost_micro_usd"]
        assert first["result"]["answers"] == second["result"]["answers"]
        other = httpx.get(f"{stack.url}/v1/documents/{doc['id']}", headers={"X-API-Key": stack.keys[1]})
        assert other.status_code == 404
        assert c.delete(f"/v1/documents/{doc['id']}").status_code == 204
        assert c.get(f"/v1/documents/{doc['id']}").status_code == 404
