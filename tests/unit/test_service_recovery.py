"""Issue 13, the sweeper's side of recovery on the embedded broker (SQLite): queued jobs are
compared with the messages really waiting in the broker, so a lost message is sent again on
the next sweep (seconds) instead of after ten minutes, and a waiting one is never doubled.
With a real worker, SIGKILL and a Redis restart: tests/integration/test_faults.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.sqlite_service import sqlite_service



@pytest.fixture
def db(tmp_path):
    from service.api.keys import get_or_create_tenant
    from service.core.db import session_scope

    with sqlite_service(tmp_path):
        with session_scope() as s:
            tenant = get_or_create_tenant(s, "t").id
        yield tenant


def _queued_jobs(tenant_id: int, n: int, age_s: float) -> list[str]:
    from service.core.db import session_scope
    from service.core.queue import enqueue_jobs
    from service.models import Job, utcnow
    from service.jobs.repository import JobRepository, NewJob

    with session_scope() as s:
        ids = JobRepository(s).create([NewJob(
            tenant_id=tenant_id, text="doc", content_type="text/plain", size_bytes=3,
            filename=None, kind="summarize", instruction=None) for _ in range(n)])
        s.execute(update(Job).where(Job.id.in_(ids))
                  .values(enqueued_at=utcnow() - timedelta(seconds=age_s)))
    assert enqueue_jobs(ids) == n
    return ids


def _drop_messages(job_ids: set[str]) -> None:
    """What a broker restart without saving does to these jobs' messages."""
    from service.core.broker_scan import job_id_of
    from service.core.queue import celery_app

    with celery_app().connection_for_write() as conn:
        channel = conn.default_channel
        for row in channel._query_all("gpu").all():
            if job_id_of(row.payload) in job_ids:
                channel.session.delete(row)
        channel.session.commit()


def test_waiting_messages_are_read_back_as_job_ids(db):
    from service.core.broker_scan import waiting_job_ids

    ids = _queued_jobs(db, 3, age_s=0)
    assert waiting_job_ids("gpu") == set(ids)
    assert waiting_job_ids("cpu") == set()


def test_sweeper_resends_lost_messages_only(db):
    from service.core.broker_scan import waiting_job_ids
    from service.core.queue import queue_depths
    from workers.tasks import sweep

    fresh = _queued_jobs(db, 2, age_s=0)  # just enqueued: never touched
    waiting = _queued_jobs(db, 3, age_s=3600)  # old, but their messages wait: not doubled
    lost = _queued_jobs(db, 2, age_s=3600)
    _drop_messages(set(lost) | {fresh[0]})
    assert queue_depths(("gpu",))["gpu"] == 4
    outcome = sweep()
    assert outcome["lost_queued"] == 2 and outcome["stale_running"] == 0
    assert waiting_job_ids("gpu") == set(waiting) | set(lost) | {fresh[1]}
    assert queue_depths(("gpu",))["gpu"] == 6  # one message per job, none doubled
    assert sweep()["lost_queued"] == 0  # the next sweep finds every old job waiting


def test_child_dies_with_its_parent_is_set_in_every_worker_child():
    from celery.signals import worker_process_init

    from workers import tasks

    receivers = [r[1]() for r in worker_process_init.receivers]
    assert tasks._die_with_parent in receivers


def test_a_claimer_that_read_an_old_state_claims_nothing(db, monkeypatch):
    """Two deliveries of one job: the second claimer reads the job as queued, then the first
    claims it and finishes it before the second writes (on SQLite FOR UPDATE does nothing).
    The second claim must change nothing: no second run, and a done job stays done."""
    from service.core.db import session_factory
    from service.jobs import repository
    from service.models import Job, JobStatus, utcnow
    from service.jobs.repository import ClaimOutcome, JobRepository

    job_id = _queued_jobs(db, 1, age_s=0)[0]
    Session = session_factory()
    first_runs: list[int] = []
    let_in = [True]

    def clock_that_lets_the_first_claimer_in():  # called between the late claimer's read and write
        if let_in.pop() if let_in else False:
            with Session() as first:
                outcome, claimed = JobRepository(first).claim(job_id, stale_after_s=60)
                first.commit()
                first_runs.append(claimed.attempt)
                assert outcome == ClaimOutcome.claimed
                first.execute(update(Job).where(Job.id == job_id)
                              .values(status=JobStatus.done.value))
                first.commit()
        return utcnow()

    monkeypatch.setattr(repository, "utcnow", clock_that_lets_the_first_claimer_in)
    with Session() as late:
        outcome, claimed = JobRepository(late).claim(job_id, stale_after_s=60)
        late.commit()
    assert first_runs == [1]
    assert (outcome, claimed) == (ClaimOutcome.busy, None)
    with Session() as check:
        job = check.get(Job, job_id)
        assert (job.status, job.attempts) == (JobStatus.done.value, 1)
