"""The batch state machine on a real (SQLite, migrated) database: ingestion makes one job per
file; settling copies each job's outcome once (a second settle, as from a redelivered task,
changes nothing); a failed file is retried with a new job up to the cap and then counted as
failed without failing the batch; the last settle moves the batch to aggregating exactly once;
the overview finishes it; cancel stops the rest. Jobs are driven through JobRepository's own
transitions with a hand-made generation output (no model: the model path is the integration
tests')."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service.core.db import session_scope
from service.models import BatchFile, Job, Result, UsageRecord
from service.jobs.repository import JobRepository
from service.repos.ingest import Ingestion, SourceFile
from service.repos.repository import BatchRepository, FileStep, NewBatch

OUTPUT = {"text": "It parses things.", "answers": [], "tokens_in": 50, "tokens_out": 5,
          "seconds": 0.5, "kv_kept_fraction": 0.5, "kv_bytes_peak": 100,
          "kv_bytes_full_peak": 200}


@pytest.fixture
def db(tmp_path, monkeypatch):
    from service.core.migrate import upgrade
    from service.core.state import reset_process_state

    url = f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.setenv("NAMM_DATABASE__URL", url)
    reset_process_state()
    upgrade(url)
    from service.api.keys import get_or_create_tenant

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "t").id
    yield tenant
    reset_process_state()


def new_batch(tenant: int, n_files: int = 3, tasks=("summaries", "overview"),
              questions=()) -> tuple[str, list[int]]:
    with session_scope() as s:
        batch = BatchRepository(s).create(NewBatch(
            tenant_id=tenant, source={"kind": "path", "path": "/x"}, policy="surprisal",
            budget=None, max_new_tokens=8, tasks=list(tasks), questions=list(questions)))
        batch_id = batch.id
    ingestion = Ingestion(files=[SourceFile(f"pkg/m{i}.py", "python", 10, f"X = {i}\n")
                                 for i in range(n_files)],
                          skipped=[("node_modules/", "vendored"), ("a.png", "unsupported")])
    with session_scope() as s:
        job_ids = BatchRepository(s).record_ingestion(batch_id, ingestion)
    with session_scope() as s:  # a second delivery of the ingestion task: nothing more
        assert BatchRepository(s).record_ingestion(batch_id, ingestion) == []
        files = BatchRepository(s).files(batch_id)
        assert [f.job_id for f in files] == job_ids  # sent in reading order
        assert [BatchRepository(s).job_target(j) for j in job_ids] == [("file", f.id)
                                                                        for f in files]
    return batch_id, [f.id for f in files]


def run(job_id: str, ok: bool = True, answers: list[str] | None = None) -> None:
    """What workers.runner.run_job does to the job rows, with a given outcome."""
    with session_scope() as s:
        repo = JobRepository(s)
        repo.claim(job_id, stale_after_s=60)
    with session_scope() as s:
        repo = JobRepository(s)
        if ok:
            from service.core.settings import get_settings

            output = dict(OUTPUT, answers=answers or [])
            assert repo.complete(job_id, "SmolLM2-test", output, get_settings().prices)
        else:
            repo.fail(job_id, "internal error (RuntimeError)")


def job_of(file_id: int) -> str:
    with session_scope() as s:
        return BatchRepository(s).file_job(file_id)


def settle(file_id: int, attempts: int = 2):
    with session_scope() as s:
        return BatchRepository(s).settle_file(file_id, file_attempts=attempts)


def batch(tenant: int, batch_id: str):
    with session_scope() as s:
        return BatchRepository(s).get(tenant, batch_id)


def test_files_settle_once_and_the_last_one_starts_the_overview(db):
    batch_id, ids = new_batch(db)
    b = batch(db, batch_id)
    assert (b.status, b.files_total, b.files_skipped) == ("running", 3, 2)
    with session_scope() as s:
        jobs = s.scalars(select(Job).where(Job.batch_id == batch_id)).all()
        assert len(jobs) == 3 and all(j.kind == "summarize" for j in jobs)
    actions = []
    for file_id in ids:
        job_id = job_of(file_id)
        run(job_id)
        first = settle(file_id)
        again = settle(file_id)  # a redelivered file task, or the beat reconciler
        assert first.step is FileStep.settled and again.step is FileStep.waiting
        actions += [first.next_action, again.next_action]
        assert job_of(file_id) is None  # a finished file is never run again
    assert actions == [None, None, None, None, "overview", None]
    b = batch(db, batch_id)
    assert (b.status, b.files_done, b.files_failed, b.tokens_read) == ("aggregating", 3, 0, 150)
    with session_scope() as s:
        files = BatchRepository(s).files(batch_id)
        assert [f.result for f in files] == ["It parses things."] * 3
        overview_job = BatchRepository(s).overview_job(batch_id, max_chars=10_000)
    with session_scope() as s:  # asked again (a second overview delivery): the same job
        assert BatchRepository(s).overview_job(batch_id, max_chars=10_000) == overview_job
        assert BatchRepository(s).job_target(overview_job) == ("aggregate", batch_id)
        assert BatchRepository(s).questions_job(batch_id, max_chars=10_000) == (None, False)
        text = s.get(Job, overview_job).document.text
    assert "## pkg/m0.py" in text and "## pkg/m2.py" in text
    run(overview_job)
    with session_scope() as s:
        assert BatchRepository(s).finish(batch_id)
    b = batch(db, batch_id)
    assert b.status == "done" and b.overview == "It parses things." and b.error is None
    with session_scope() as s:
        n_results = s.scalar(select(func.count()).select_from(Result).join(
            Job, Job.id == Result.job_id).where(Job.batch_id == batch_id))
        assert n_results == 4  # three files and the overview, one result each
        usage = BatchRepository(s).usage_totals(batch_id)
        assert usage["jobs"] == 4 and usage["tokens_in"] == 200
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 4


def test_a_failed_file_is_retried_up_to_the_cap_then_failed_without_failing_the_batch(db):
    batch_id, ids = new_batch(db, n_files=2, tasks=("summaries",))
    bad, good = ids
    first_job = job_of(bad)
    run(first_job, ok=False)
    step = settle(bad, attempts=2)
    assert step.step is FileStep.retry
    second_job = job_of(bad)
    assert second_job == step.retry_job_id and second_job != first_job  # a new job
    run(second_job, ok=False)
    assert settle(bad, attempts=2).step is FileStep.settled
    run(job_of(good))
    final = settle(good, attempts=2)
    assert final.next_action == "done"  # no overview asked: done at once
    b = batch(db, batch_id)
    assert (b.status, b.files_done, b.files_failed) == ("done", 1, 1)
    with session_scope() as s:
        f = s.get(BatchFile, bad)
        assert (f.status, f.attempts) == ("failed", 2) and "internal error" in f.error


def test_cancel_stops_queued_files_and_jobs(db):
    batch_id, ids = new_batch(db)
    run(job_of(ids[0]))
    settle(ids[0])
    with session_scope() as s:
        b = BatchRepository(s).cancel(db, batch_id)
        assert b.status == "cancelled"
        assert BatchRepository(s).cancel(db + 1, batch_id) is None  # another tenant
    with session_scope() as s:
        statuses = [f.status for f in BatchRepository(s).files(batch_id)]
        job_statuses = sorted(s.scalars(select(Job.status).where(Job.batch_id == batch_id)))
    assert statuses == ["done", "cancelled", "cancelled"]
    assert job_statuses == ["cancelled", "cancelled", "done"]
    assert job_of(ids[1]) is None


def test_a_batch_with_nothing_to_read_is_done_and_a_refused_source_fails(db):
    with session_scope() as s:
        repo = BatchRepository(s)
        empty = repo.create(NewBatch(tenant_id=db, source={"kind": "path", "path": "/x"},
                                     policy="surprisal", budget=None, max_new_tokens=8)).id
        refused = repo.create(NewBatch(tenant_id=db, source={"kind": "archive"}, policy="surprisal",
                                       budget=None, max_new_tokens=8,
                                       upload=("x.zip", b"junk"))).id
    with session_scope() as s:
        assert BatchRepository(s).record_ingestion(empty, Ingestion()) == []
        assert BatchRepository(s).ingest_claim(refused).upload == b"junk"
        BatchRepository(s).fail(refused, "source refused: corrupt")
    assert batch(db, empty).status == "done"
    b = batch(db, refused)
    assert b.status == "failed" and "corrupt" in b.error
    with session_scope() as s:
        assert BatchRepository(s).ingest_claim(refused) is None


def test_questions_are_answered_over_the_whole_repository_before_the_batch_is_done(db):
    batch_id, ids = new_batch(db, n_files=3, tasks=("summaries",),
                              questions=["What is X?", "Which file defines X = 2?"])
    for file_id in ids:
        run(job_of(file_id))
        last = settle(file_id)
    assert last.next_action == "overview"  # aggregation: the questions, no overview asked
    with session_scope() as s:
        repo = BatchRepository(s)
        assert repo.overview_job(batch_id, max_chars=10_000) is None
        job_id, made = repo.questions_job(batch_id, max_chars=10_000)
        assert made and repo.questions_job(batch_id, max_chars=10_000) == (job_id, False)
        job = s.get(Job, job_id)
        assert job.kind == "answer" and job.questions == ["What is X?", "Which file defines X = 2?"]
        # every file's text, in reading order
        text = job.document.text
        assert text.index("File: pkg/m0.py") < text.index("File: pkg/m1.py") < text.index(
            "File: pkg/m2.py") and "X = 2" in text
        assert not repo.finish(batch_id)  # its job has not run
        assert repo.job_target(job_id) == ("aggregate", batch_id)
    run(job_id, answers=["X is 0, 1 or 2."])
    with session_scope() as s:
        repo = BatchRepository(s)
        assert repo.finish(batch_id)
        b = repo.get(db, batch_id)
        assert b.status == "done" and b.error is None and b.overview is None
        assert repo.answers(b) == [("What is X?", "X is 0, 1 or 2."),
                                   ("Which file defines X = 2?", None)]  # one answer stored
