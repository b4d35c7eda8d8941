"""Several jobs in one batch in the worker (issue 22, item 3) on the real model (SmolLM2-135M, CPU)
and SQLite: the task's job takes the queued plain jobs that fit with it; each is finished on its
own with the answers and counted work namm.generate gives it alone; a bad input fails alone;
jobs that are not batched (a stored document's read) are left queued; the companions' own
deliveries later change nothing; a companion that does not fit goes back to the queue."""

from __future__ import annotations

import pytest

import namm
from namm.batch import generate_batch
from tests.sqlite_service import sqlite_service

pytestmark = pytest.mark.model

DOCS = [" ".join(f"Crate {i} holds {7 * i % 31} {w}." for i in range(n)) + f" The password is {pw}."
        for n, w, pw in ((60, "apples", "Lima-12"), (90, "nails", "Oslo-7"), (40, "books", "Rome-3"))]


@pytest.fixture
def env(tmp_path):
    with sqlite_service(tmp_path, NAMM_WORKER__PROGRESS_INTERVAL_S="0", NAMM_MODEL__N_UP="128",
                        NAMM_WORKER__BATCH_MAX_JOBS="4") as tmp:
        yield tmp


def _jobs(specs) -> list[str]:
    from service.api.keys import get_or_create_tenant
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository, NewJob

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        return JobRepository(s).create([NewJob(
            tenant_id=tenant.id, text=text, content_type="text/plain", size_bytes=len(text), filename=None,
            kind="answer", instruction=None, questions=["What is the password?"], policy=policy,
            budget=None if policy == "full" else namm.Budget.tokens(96), max_new_tokens=8, **extra)
            for text, policy, extra in specs])


def _row(job_id):
    from service.core.db import session_scope
    from service.models import Job

    with session_scope() as s:
        job = s.get(Job, job_id)
        _ = job.result, job.usage
        s.expunge_all()
        return job


def _run(job_id, lm):
    from workers.runner import run_job

    return run_job(job_id, load_model=lambda: lm, generate=namm.generate, generate_batch=generate_batch)


def test_queued_jobs_run_together_each_as_alone(env, lm):
    too_long = " ".join(f"Line {i}: the shipment left the depot on time." for i in range(1400))
    ids = _jobs([(DOCS[0], "surprisal", {}), (DOCS[1], "full", {}), (DOCS[2], "streaming_llm", {}),
                 (too_long, "full", {})])
    assert _run(ids[0], lm) == "done"
    jobs = [_row(i) for i in ids]
    assert [j.status for j in jobs] == ["done", "done", "done", "failed"]
    assert "ContextTooLongError" in jobs[3].error  # the bad input failed alone
    for job, (doc, policy) in zip(jobs[:3], ((DOCS[0], "surprisal"), (DOCS[1], "full"), (DOCS[2], "streaming_llm"))):
        # alone as the worker runs a one-question job: the question read before the document
        alone = namm.generate(lm, doc, "What is the password?", policy=policy, max_new_tokens=8,
                              budget=None if policy == "full" else namm.Budget.tokens(96), n_up=128,
                              query_aware=True)
        assert job.result.answers == alone.answers, policy
        # billed by its own counted work, as alone
        assert job.usage.tokens_in == alone.stats.tokens_in and job.usage.tokens_out == alone.stats.tokens_out
        assert job.usage.kv_token_steps == pytest.approx(alone.stats.kv_token_steps)
        assert job.attempts == 1
    # the companions' own deliveries arrive later: nothing runs again
    for job_id in ids[1:]:
        assert _run(job_id, lm) == "finished"
    assert [_row(i).attempts for i in ids[:3]] == [1, 1, 1]


def test_reads_and_retention_jobs_are_not_taken_into_a_batch(env, lm):
    ids = _jobs([(DOCS[0], "surprisal", {}), (DOCS[2], "surprisal", {"retention": True}),
                 (DOCS[1], "surprisal", {})])
    from service.core.db import session_scope
    from service.models import Job

    with session_scope() as s:  # a stored document's read (kind read) is never batched
        s.query(Job).filter_by(id=ids[2]).update({"kind": "read"})
    assert _run(ids[0], lm) == "done"
    assert [_row(i).status for i in ids] == ["done", "queued", "queued"]


def test_a_companion_that_does_not_fit_goes_back_to_the_queue(env, lm, monkeypatch):
    from workers import batching

    ids = _jobs([(DOCS[0], "full", {}), (DOCS[1], "full", {})])
    first = batching.memory_bytes  # room for the first job's memory only
    monkeypatch.setattr(batching, "free_memory_bytes",
                        lambda lm_: 2 * first(_claimed(ids[0]), len(DOCS[0]), batching.kv_bytes_per_token(lm), 128) + 1)
    assert _run(ids[0], lm) == "done"
    second = _row(ids[1])
    assert second.status == "queued" and second.attempts == 0 and second.started_at is None
    assert _run(ids[1], lm) == "done"


def _claimed(job_id):
    from service.jobs.repository import ClaimedJob

    return ClaimedJob(id=job_id, tenant_id=1, text="", kind="answer", instruction=None, policy="full", budget=None)


def test_a_batch_terminated_by_the_worker_leaves_its_jobs_to_run_again(env, lm):
    """Celery terminates a task whose message it hands back (a lost broker connection with late
    acks): the SystemExit raised in the child must not be recorded as the jobs' failure. They
    stay running, and run again once their heartbeat is stale, as a job alone would."""
    ids = _jobs([(DOCS[0], "surprisal", {}), (DOCS[1], "surprisal", {})])

    def terminated(lm_, requests, **kwargs):
        raise SystemExit(-15)

    from workers.runner import run_job

    with pytest.raises(SystemExit):
        run_job(ids[0], load_model=lambda: lm, generate=namm.generate, generate_batch=terminated)
    assert [(_row(i).status, _row(i).error) for i in ids] == [("running", None), ("running", None)]
