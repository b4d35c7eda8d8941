"""The beat tick (workers/batches.py `tick`) on SQLite and the embedded broker (no worker):
a due schedule becomes a batch whose ingestion is sent to queue `cpu`; a file whose job
finished but was never settled (its settle was lost) is settled, and the last one sends the
overview's job to queue `gpu`; a queued batch older than the requeue delay is found."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.core.db import session_scope
from service.jobs.repository import JobRepository
from service.repos.ingest import Ingestion, SourceFile
from service.repos.repository import BatchRepository, NewBatch
from service.repos.schedules import ScheduleRepository, ScheduleSpec

OUTPUT = {"text": "Summary.", "answers": [], "tokens_in": 30, "tokens_out": 3, "seconds": 0.1,
          "kv_kept_fraction": 0.5, "kv_bytes_peak": 10, "kv_bytes_full_peak": 20}


@pytest.fixture
def env(tmp_path, monkeypatch):
    from service.api.keys import get_or_create_tenant
    from service.core.migrate import upgrade
    from service.core.queue import queue_depths
    from service.core.state import reset_process_state

    monkeypatch.setenv("NAMM_DATABASE__URL", f"sqlite:///{tmp_path / 't.db'}")
    monkeypatch.setenv("NAMM_BROKER__URL", f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    monkeypatch.setenv("NAMM_WORKER__REQUEUE_AFTER_S", "3600")
    reset_process_state()
    upgrade()
    queue_depths()
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "t").id
    yield tenant
    reset_process_state()


def depth(queue: str) -> int:
    from service.core.queue import queue_depths

    return queue_depths((queue,))[queue]


def test_tick_starts_due_schedules_and_repairs_lost_settles(env):
    from workers.batches import tick

    now = datetime.now(timezone.utc)
    with session_scope() as s:
        ScheduleRepository(s).create(env, ScheduleSpec(
            cron="*/5 * * * *", timezone="UTC", source={"kind": "path", "path": "/srv/x"},
            tasks=["summaries", "overview"], policy="surprisal", budget=None, max_new_tokens=8),
            now=now - timedelta(hours=1))
        batch = BatchRepository(s).create(NewBatch(
            tenant_id=env, source={"kind": "path", "path": "/srv/y"}, policy="surprisal",
            budget=None, max_new_tokens=8))
        batch_id = batch.id
    with session_scope() as s:
        job_ids = BatchRepository(s).record_ingestion(batch_id, Ingestion(
            files=[SourceFile("a.py", "python", 5, "A = 1\n"),
                   SourceFile("b.py", "python", 5, "B = 2\n")]))
    for job_id in job_ids:  # the jobs ran; their settles were lost (no after_job call)
        with session_scope() as s:
            JobRepository(s).claim(job_id, stale_after_s=60)
        with session_scope() as s:
            from service.core.settings import get_settings

            JobRepository(s).complete(job_id, "m", dict(OUTPUT), get_settings().prices)
    cpu, gpu = depth("cpu"), depth("gpu")
    report = tick(now)
    assert report["scheduled"] == 1 and report["settled"] == 2
    assert depth("cpu") == cpu + 1  # the scheduled batch's ingestion
    assert depth("gpu") == gpu + 1  # the overview's job, sent by the last settle
    with session_scope() as s:
        b = BatchRepository(s).get(env, batch_id)
        assert (b.status, b.files_done, b.tokens_read) == ("aggregating", 2, 60)
        assert b.overview_job_id
    again = tick(now + timedelta(seconds=1))  # nothing due, nothing unsettled, nothing stale
    assert again == {"scheduled": 0, "settled": 0, "ingest_resent": 0, "aggregating_checked": 0}
    with session_scope() as s:  # a queued batch older than REQUEUE_AFTER_S is sent again
        queued, _ = BatchRepository(s).stalled(older_than_s=-60)
    assert len(queued) == 1


def test_a_batch_being_ingested_is_not_resent_until_its_heartbeat_is_stale(env):
    """A long clone must not be cloned again by every tick: while the ingesting worker's
    heartbeat is fresh the batch is neither stalled nor claimable by a second delivery; once the
    heartbeat is older than the stale delay (the worker died) both become true again."""
    with session_scope() as s:
        batch_id = BatchRepository(s).create(NewBatch(
            tenant_id=env, source={"kind": "path", "path": "/srv/z"}, policy="surprisal",
            budget=None, max_new_tokens=8)).id
    with session_scope() as s:  # never touched: stalled once older than the requeue delay
        assert BatchRepository(s).stalled(older_than_s=-60, stale_after_s=20)[0] == [batch_id]
    with session_scope() as s:  # a worker claims it and starts reading
        assert BatchRepository(s).ingest_claim(batch_id, stale_after_s=20) is not None
    with session_scope() as s:
        repo = BatchRepository(s)
        assert repo.stalled(older_than_s=-60, stale_after_s=20)[0] == []
        assert repo.ingest_claim(batch_id, stale_after_s=20) is None  # a second delivery: busy
        assert repo.ingest_heartbeat(batch_id)
    with session_scope() as s:  # the worker went quiet: stale from the point of view of 0 s
        repo = BatchRepository(s)
        assert repo.stalled(older_than_s=-60, stale_after_s=-1)[0] == [batch_id]
        assert repo.ingest_claim(batch_id, stale_after_s=-1) is not None
    with session_scope() as s:  # ingested: no heartbeat is accepted any more
        repo = BatchRepository(s)
        repo.record_ingestion(batch_id, Ingestion(files=[SourceFile("a.py", "python", 5, "A = 1\n")]))
    with session_scope() as s:
        assert not BatchRepository(s).ingest_heartbeat(batch_id)
