"""Worker logic on SQLite: claiming, idempotency, attempt cap, progress, cancel, one-transaction
result + usage. `stub_generate` stands in for namm.generate so these run in milliseconds; the
real model runs in tests/integration/."""

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from service.state import reset_process_state


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("NAMM_DATABASE__URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.setenv("NAMM_BROKER__URL", f"sqla+sqlite:///{tmp_path / 'b.db'}")
    monkeypatch.setenv("NAMM_WORKER__PROGRESS_INTERVAL_S", "0")
    reset_process_state()
    from service import migrate

    migrate.upgrade()
    yield
    reset_process_state()


def make_job(**overrides) -> str:
    from service.db import session_scope
    from service.jobs import JobSpec, insert_jobs
    from service.keys import get_or_create_tenant

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "t")
        spec = JobSpec(tenant_id=tenant.id, text="The vault code is 4711.", content_type="text/plain",
                       size_bytes=23, filename=None, kind="answer", instruction=None,
                       questions=["What is the code?"], policy="namm", budget=0.5,
                       max_new_tokens=8, **overrides)
        return insert_jobs(s, [spec])[0]


def job_row(job_id):
    from service.db import session_scope
    from service.models import Job

    with session_scope() as s:
        return s.get(Job, job_id)


@dataclass
class StubResult:
    """Shaped like namm.GenerationResult (to_dict)."""

    answers: list = field(default_factory=lambda: ["4711"])

    def to_dict(self):
        return {"text": self.answers[0], "answers": self.answers, "policy": "namm",
                "budget": 0.5, "tokens_in": 1000, "tokens_out": 4, "kv_kept_per_layer": [500],
                "kv_kept_fraction": 0.5, "kv_bytes_peak": 50, "kv_bytes_full_peak": 100,
                "seconds_prefill": 1.0, "seconds_decode": 1.0, "seconds_policy": 0.1,
                "seconds": 2.0, "truncated": False}


class StubModel:
    name = "stub-model"


def stub_generate(lm, context, questions=None, *, progress=None, **kwargs):
    stub_generate.calls.append(dict(kwargs, context=context, questions=questions))
    for done in (250, 500, 1000):
        if progress:
            progress(done, 1000)
    return StubResult()


stub_generate.calls = []


def run(job_id, generate=stub_generate):
    from workers.runner import run_job

    return run_job(job_id, load_model=lambda: StubModel(), generate=generate)


def test_job_runs_and_stores_result_and_usage_together(db):
    from service.db import session_scope
    from service.models import Result, UsageRecord

    job_id = make_job()
    assert run(job_id) == "done"
    job = job_row(job_id)
    assert job.status == "done" and job.progress == 1.0 and job.attempts == 1
    assert job.model == "stub-model"
    with session_scope() as s:
        usage = s.scalar(select(UsageRecord).where(UsageRecord.job_id == job_id))
        result = s.scalar(select(Result).where(Result.job_id == job_id))
    assert result.text == "4711" and result.stats["kv_kept_fraction"] == 0.5
    assert usage.tokens_in == 1000 and usage.kv_bytes_peak == 50
    assert usage.cost_micro_usd < usage.full_cache_cost_micro_usd


def test_rerun_of_finished_job_is_a_noop(db):
    from service.db import session_scope
    from service.models import Result

    job_id = make_job()
    assert run(job_id) == "done"
    assert run(job_id) == "finished"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 1
    assert job_row(job_id).attempts == 1


def test_progress_is_written_while_running(db):
    seen = []

    def watching_generate(lm, context, questions=None, *, progress=None, **kw):
        progress(400, 1000)
        seen.append(job_row(job_id).progress)
        return StubResult()

    job_id = make_job()
    assert run(job_id, watching_generate) == "done"
    assert seen == [pytest.approx(0.4)]


def test_cancel_stops_generation_and_stores_nothing(db):
    from service.db import session_scope
    from service.jobs import cancel_job

    def cancelled_midway(lm, context, questions=None, *, progress=None, **kw):
        with session_scope() as s:
            cancel_job(s, job_row(job_id).tenant_id, job_id)
        progress(500, 1000)  # the next progress report notices and aborts
        raise AssertionError("generation should have been stopped")

    job_id = make_job()
    assert run(job_id, cancelled_midway) == "cancelled"
    from service.models import UsageRecord

    assert job_row(job_id).status == "cancelled"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 0


def test_input_errors_fail_the_job_with_a_clear_message(db):
    from namm.errors import ContextTooLongError

    def too_long(*a, **kw):
        raise ContextTooLongError("input needs 9000 tokens but the model has an 8192-token context")

    job_id = make_job(truncate=False)
    assert run(job_id, too_long) == "failed"
    job = job_row(job_id)
    assert job.status == "failed" and "8192-token context" in job.error


def test_crashes_fail_without_leaking_details(db):
    def crash(*a, **kw):
        raise RuntimeError("CUDA error at /secret/path")

    job_id = make_job()
    assert run(job_id, crash) == "failed"
    assert "RuntimeError" in job_row(job_id).error and "/secret" not in job_row(job_id).error


def test_attempt_cap_and_busy_and_stale_takeover(db):
    from service.db import session_scope
    from service.models import Job, utcnow

    job_id = make_job()
    with session_scope() as s:  # a live worker has it: heartbeat fresh
        s.execute(update(Job).where(Job.id == job_id).values(
            status="running", attempts=1, heartbeat_at=utcnow()))
    assert run(job_id) == "busy"
    with session_scope() as s:  # that worker died: heartbeat stale -> taken over
        s.execute(update(Job).where(Job.id == job_id).values(
            heartbeat_at=utcnow() - timedelta(hours=1)))
    assert run(job_id) == "done" and job_row(job_id).attempts == 2

    capped = make_job()
    with session_scope() as s:  # delivered max_attempts times already (worker lost each time)
        s.execute(update(Job).where(Job.id == capped).values(
            status="running", attempts=3, heartbeat_at=utcnow() - timedelta(hours=1)))
    assert run(capped) == "exhausted"
    job = job_row(capped)
    assert job.status == "failed" and "3 attempts" in job.error


def test_generation_arguments_per_kind():
    from workers.claims import ClaimedJob
    from workers.runner import generation_arguments

    summary = generation_arguments(ClaimedJob(id="1", tenant_id=1, text="d", kind="summarize",
                                              instruction=None))
    assert summary["questions"] is None and "Summarize" in summary["instruction"]
    full = generation_arguments(ClaimedJob(id="1", tenant_id=1, text="d", kind="answer",
                                           instruction=None, questions=["q"], policy="full",
                                           budget=0.5))
    assert full["questions"] == ["q"] and full["budget"] is None


def test_sweeper_requeues_stale_running_jobs(db, monkeypatch):
    from service.db import session_scope
    from service.enqueue import queue_depths
    from service.models import Job, utcnow
    from workers.sweeper import sweep

    job_id = make_job()
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            status="running", attempts=1, heartbeat_at=utcnow() - timedelta(hours=1)))
    assert sweep()["stale_running"] == 1
    assert job_row(job_id).status == "queued"
    assert queue_depths(("gpu",))["gpu"] == 1  # a real message in the SQLite broker


def test_api_and_worker_parent_never_import_torch():
    code = ("import sys, service.app, service.routes, service.server, workers.celery_app, "
            "workers.tasks, workers.runner; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_celery_configuration():
    from service.settings import Settings
    from workers.celery_app import broker_transport_options, make_celery

    app = make_celery(Settings(_env_file=None, broker={"url": "redis://localhost:6379/0",
                                                       "key_prefix": "t1:"}))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.broker_transport_options["global_keyprefix"] == "t1:"
    assert conf.task_routes["namm.run_job"]["queue"] == "gpu"
    assert conf.task_soft_time_limit < conf.task_time_limit
    sqlite = Settings(_env_file=None, broker={"url": "sqla+sqlite:///x.db"})
    assert "visibility_timeout" not in broker_transport_options(sqlite)
    assert callable(broker_transport_options(sqlite)["creator"])
