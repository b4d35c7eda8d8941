"""Issue 23 item 3 on SQLite and the embedded broker (no worker): a repository batch's jobs take
the tenant's free active-job slots and the rest wait (not active, no message); each job that
ends releases what fits, oldest first; cancel cancels the waiting ones; the daily token quota
holds them until the sweep finds the quota reset; tenants without quotas queue everything.
Jobs are driven through JobRepository's transitions and the worker's own after-job code
(workers/batches.py `after_job`, workers/releases.py), as the `namm.run_job` task does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from service.core.db import session_scope
from service.models import Job, UsageRecord
from service.jobs.quotas import active_jobs, set_limits
from service.jobs.repository import ClaimOutcome, JobRepository, NewJob
from service.repos.ingest import Ingestion, SourceFile
from service.repos.repository import BatchRepository, NewBatch

OUTPUT = {"text": "Summary.", "answers": [], "tokens_in": 50, "tokens_out": 5, "seconds": 0.1,
          "kv_kept_fraction": 0.5, "kv_bytes_peak": 10, "kv_bytes_full_peak": 20}


@pytest.fixture
def tenant(tmp_path, monkeypatch):
    from service.api.keys import get_or_create_tenant
    from service.core.migrate import upgrade
    from service.core.queue import queue_depths
    from service.core.state import reset_process_state

    monkeypatch.setenv("NAMM_DATABASE__URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.setenv("NAMM_BROKER__URL", f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    reset_process_state()
    upgrade()
    queue_depths()  # the broker's tables
    with session_scope() as s:
        tenant_id = get_or_create_tenant(s, "t").id
    yield tenant_id
    reset_process_state()


def limit(tenant_id: int, active: int | None = None, tokens: int | None = None) -> None:
    with session_scope() as s:
        set_limits(s, tenant_id, max_active_jobs=active, max_tokens_per_day=tokens)


def ingest(tenant_id: int, n_files: int, tasks=("summaries",), questions=()) -> tuple[str, list[str]]:
    """A batch ingested with `n_files` files; (batch id, the job ids ingestion sends)."""
    with session_scope() as s:
        batch_id = BatchRepository(s).create(NewBatch(
            tenant_id=tenant_id, source={"kind": "path", "path": "/x"}, policy="surprisal",
            budget=None, max_new_tokens=8, tasks=list(tasks), questions=list(questions))).id
    files = [SourceFile(f"pkg/m{i}.py", "python", 10, f"X = {i}\n") for i in range(n_files)]
    with session_scope() as s:
        return batch_id, BatchRepository(s).record_ingestion(batch_id, Ingestion(files=files))


def statuses(batch_id: str) -> list[str]:
    """The batch's files' jobs' statuses, in reading order."""
    with session_scope() as s:
        return [s.get(Job, f.job_id).status for f in BatchRepository(s).files(batch_id)]


def sent() -> set[str]:
    """The job ids with a message waiting on queue gpu."""
    from service.core.broker_scan import waiting_job_ids

    return waiting_job_ids("gpu")


def active(tenant_id: int) -> int:
    with session_scope() as s:
        return active_jobs(s, tenant_id)


def finish(job_id: str, ok: bool = True) -> None:
    """The job runs and ends, then what the `namm.run_job` task does after every job."""
    from service.core.settings import get_settings
    from workers.batches import after_job
    from workers.releases import release_after

    with session_scope() as s:
        assert JobRepository(s).claim(job_id, stale_after_s=60)[0] is ClaimOutcome.claimed
    with session_scope() as s:
        if ok:
            assert JobRepository(s).complete(job_id, "m", dict(OUTPUT), get_settings().prices)
        else:
            JobRepository(s).fail(job_id, "internal error (RuntimeError)")
    after_job(job_id)
    release_after(job_id)


def test_quota_2_and_5_files_queue_2_and_the_rest_wait_then_each_end_releases_one(tenant):
    limit(tenant, active=2)
    batch_id, to_send = ingest(tenant, 5)
    assert statuses(batch_id) == ["queued", "queued", "waiting", "waiting", "waiting"]
    with session_scope() as s:
        first_two = [f.job_id for f in BatchRepository(s).files(batch_id)][:2]
    assert to_send == first_two  # only these go to the broker
    assert active(tenant) == 2
    with session_scope() as s:  # a waiting job delivered anyway is not run
        waiting_id = BatchRepository(s).files(batch_id)[2].job_id
        assert JobRepository(s).claim(waiting_id, stale_after_s=60)[0] is ClaimOutcome.waiting
    finish(to_send[0])
    assert statuses(batch_id) == ["done", "queued", "queued", "waiting", "waiting"]
    assert active(tenant) == 2 and waiting_id in sent()  # released and sent, in reading order
    finish(to_send[1], ok=False)  # a failure frees its slot too; its retry waits its turn
    assert statuses(batch_id) == ["done", "waiting", "queued", "queued", "waiting"]
    assert active(tenant) == 2
    with session_scope() as s:
        assert BatchRepository(s).files(batch_id)[1].attempts == 2  # a new job: the retry
    for _ in range(20):  # run whatever is queued until the batch is done
        with session_scope() as s:
            queued = s.scalars(select(Job.id).where(Job.batch_id == batch_id,
                                                    Job.status == "queued")).all()
        if not queued:
            break
        finish(queued[0])
        assert active(tenant) <= 2
    with session_scope() as s:
        b = BatchRepository(s).get(tenant, batch_id)
        assert (b.status, b.files_done, b.files_failed) == ("done", 5, 0)


def test_waiting_files_show_waiting_with_the_reason(tenant):
    from service.api.batch_schemas import batch_out
    from service.core.settings import get_settings
    from service.jobs.admission import waiting_reason

    limit(tenant, active=1)
    batch_id, _ = ingest(tenant, 3)
    with session_scope() as s:
        repo = BatchRepository(s)
        batch = repo.get(tenant, batch_id)
        waiting = repo.waiting_jobs(batch_id)
        reason = waiting_reason(s, tenant, get_settings().quotas)
        out = batch_out(batch, repo.files(batch_id), [], {}, waiting=waiting,
                        waiting_reason=reason)
    assert [f.status for f in out.files] == ["queued", "waiting", "waiting"]
    assert out.files[0].waiting_reason is None
    assert out.files[1].waiting_reason == ("waiting for the tenant's active-jobs quota "
                                           "(1 queued or running at once)")


def test_cancel_cancels_the_waiting_files_and_nothing_is_released_later(tenant):
    from workers.releases import release_all

    limit(tenant, active=2)
    batch_id, to_send = ingest(tenant, 5)
    with session_scope() as s:
        assert BatchRepository(s).cancel(tenant, batch_id).status == "cancelled"
    assert statuses(batch_id) == ["cancelled"] * 5
    with session_scope() as s:
        assert [f.status for f in BatchRepository(s).files(batch_id)] == ["cancelled"] * 5
    assert release_all() == 0 and active(tenant) == 0


def test_a_tenant_without_quotas_has_every_file_queued_at_once(tenant):
    batch_id, to_send = ingest(tenant, 5)
    assert statuses(batch_id) == ["queued"] * 5 and len(to_send) == 5


def test_at_the_daily_token_quota_nothing_is_released_until_the_sweep_sees_it_reset(tenant):
    from service.jobs.admission import waiting_reason
    from service.core.settings import get_settings
    from workers.tasks import sweep

    limit(tenant, active=2, tokens=100)
    batch_id, to_send = ingest(tenant, 4)
    finish(to_send[0])
    finish(to_send[1])  # 2 x 55 tokens today: the quota is reached
    assert statuses(batch_id) == ["done", "done", "queued", "waiting"]  # released at 55 < 100
    with session_scope() as s:
        third = BatchRepository(s).files(batch_id)[2].job_id
    finish(third)
    assert statuses(batch_id) == ["done", "done", "done", "waiting"]  # 165 >= 100: held
    assert active(tenant) == 0 and sweep()["released"] == 0
    with session_scope() as s:
        assert "daily token quota" in waiting_reason(s, tenant, get_settings().quotas)
        # midnight UTC passed: today's tokens are yesterday's
        s.execute(update(UsageRecord).values(
            created_at=UsageRecord.created_at - timedelta(days=1)))
    assert sweep()["released"] == 1
    assert statuses(batch_id)[-1] == "queued"


def test_the_overview_and_questions_jobs_wait_their_turn_too(tenant):
    limit(tenant, active=1)
    batch_id, to_send = ingest(tenant, 1, tasks=("summaries", "overview"),
                               questions=["What is X?"])
    with session_scope() as s:  # an older waiting job of the tenant (e.g. another batch's)
        older = JobRepository(s).create([NewJob(tenant_id=tenant, text="doc",
                                                content_type="text/plain", size_bytes=3,
                                                filename=None, kind="summarize",
                                                instruction=None)], queued=0)[0]
    before = sent()

    def kinds() -> dict[str, str]:
        with session_scope() as s:
            return dict(s.execute(select(Job.kind, Job.status).where(
                Job.batch_id == batch_id, Job.id != to_send[0])).all())

    finish(to_send[0])  # settles the file, which makes the overview's and the questions' jobs
    assert kinds() == {"summarize": "waiting", "answer": "waiting"}  # the older one first
    assert sent() - before == {older} and active(tenant) == 1
    from workers.batches import start_aggregation

    start_aggregation(batch_id)  # asked again (the tick): nothing made, nothing sent
    with session_scope() as s:
        overview = BatchRepository(s).get(tenant, batch_id).overview_job_id
        assert s.scalar(select(func.count()).select_from(Job)
                        .where(Job.batch_id == batch_id)) == 3
    assert sent() - before == {older}
    finish(older)
    assert kinds() == {"summarize": "queued", "answer": "waiting"} and overview in sent()
    finish(overview)
    assert kinds() == {"summarize": "done", "answer": "queued"}
    with session_scope() as s:
        questions = s.scalar(select(Job.id).where(Job.batch_id == batch_id, Job.kind == "answer"))
    finish(questions)
    with session_scope() as s:
        assert BatchRepository(s).get(tenant, batch_id).status == "done"
    assert active(tenant) == 0


def test_releases_and_submissions_racing_never_pass_the_quota(tenant):
    """Worker and submitter threads race on SQLite (tests/quota_race.py; on PostgreSQL:
    tests/integration/test_quota_release_postgres.py)."""
    from quota_race import QUOTA, race

    limit(tenant, active=QUOTA)
    race(tenant, one_claim_at_a_time=True)
