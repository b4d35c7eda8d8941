"""Worker logic on SQLite: claiming, idempotency, attempt cap, progress, cancel, one-transaction
result + usage. `stub_generate` stands in for namm.generate so these run in milliseconds; the
real model runs in tests/integration/."""

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from namm.errors import ModelLoadError
from namm.spec import Budget
from tests.sqlite_service import sqlite_service


@pytest.fixture
def db(tmp_path):
    with sqlite_service(tmp_path, NAMM_WORKER__PROGRESS_INTERVAL_S="0"):
        yield


def make_job(**overrides) -> str:
    from service.api.keys import get_or_create_tenant
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository, NewJob

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "t")
        fields = dict(tenant_id=tenant.id, text="The vault code is 4711.", content_type="text/plain",
                      size_bytes=23, filename=None, kind="answer", instruction=None,
                      questions=["What is the code?"], policy="surprisal", budget=Budget.fraction(0.5),
                      max_new_tokens=8)
        return JobRepository(s).create([NewJob(**{**fields, **overrides})])[0]


def job_row(job_id):
    from service.core.db import session_scope
    from service.models import Job

    with session_scope() as s:
        return s.get(Job, job_id)


@dataclass
class StubResult:
    """Shaped like namm.GenerationResult (to_dict)."""

    answers: list = field(default_factory=lambda: ["4711"])

    def to_dict(self):
        return {"text": self.answers[0], "answers": self.answers, "policy": "surprisal",
                "budget": 0.5, "tokens_in": 1000, "tokens_out": 4, "kv_kept_per_layer": [500],
                "kv_kept_fraction": 0.5, "kv_bytes_peak": 50, "kv_bytes_full_peak": 100,
                "seconds_prefill": 1.0, "seconds_decode": 1.0, "seconds_policy": 0.1,
                "seconds": 2.0, "truncated": False}


class StubModel:
    name = "stub-model"


def stub_generate(lm, request, *, progress=None):
    stub_generate.calls.append(request)
    for done in (250, 500, 1000):
        if progress:
            progress(done, 1000)
    return StubResult()


stub_generate.calls = []


def run(job_id, generate=stub_generate):
    from workers.runner import run_job

    return run_job(job_id, load_model=lambda: StubModel(), generate=generate)


def test_job_runs_and_stores_result_and_usage_together(db):
    from service.core.db import session_scope
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
    # no measured rate for the stub model: billed its 2 s of prefill + decode at the default
    # 2.52 USD/h (1,400) plus 1,000 tokens in (100) and 4 out (1.2), and no saving claimed
    assert usage.cost_micro_usd == 1501 and usage.price_id == "default"
    assert usage.full_cache_cost_micro_usd is None and usage.counterfactual_method is None


def test_rerun_of_finished_job_is_a_noop(db):
    from service.core.db import session_scope
    from service.models import Result

    job_id = make_job()
    assert run(job_id) == "done"
    assert run(job_id) == "finished"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 1
    assert job_row(job_id).attempts == 1


def test_progress_is_written_while_running(db):
    seen = []

    def watching_generate(lm, request, *, progress=None):
        progress(400, 1000)
        seen.append(job_row(job_id).progress)
        return StubResult()

    job_id = make_job()
    assert run(job_id, watching_generate) == "done"
    assert seen == [pytest.approx(0.4)]


def test_cancel_stops_generation_and_stores_nothing(db):
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository

    def cancelled_midway(lm, request, *, progress=None):
        with session_scope() as s:
            JobRepository(s).cancel(job_row(job_id).tenant_id, job_id)
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


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error at /secret/path"),
    ValueError("a bug at /secret/path"),  # a stray ValueError is ours, not the client's input
    ModelLoadError("model path not found: /secret/path"),  # a broken deployment, not the input
])
def test_server_failures_are_internal_errors_without_details(db, error):
    def crash(*a, **kw):
        raise error

    job_id = make_job()
    assert run(job_id, crash) == "failed"
    job = job_row(job_id)
    assert job.status == "failed" and "/secret" not in job.error
    assert job.error.startswith(f"internal error ({type(error).__name__})")
    assert "not because of its input" in job.error


def test_a_broken_model_fails_the_job_as_internal(db):
    def broken_model():
        raise ModelLoadError("/models/llama3: no config.json")

    job_id = make_job()
    from workers.runner import run_job

    assert run_job(job_id, load_model=broken_model, generate=stub_generate) == "failed"
    assert job_row(job_id).error.startswith("internal error (ModelLoadError)")


def test_budget_keeps_its_unit_from_submission_to_usage(db):
    from service.core.db import session_scope
    from service.models import UsageRecord

    stub_generate.calls.clear()
    job_id = make_job(budget=Budget.tokens(1))  # one token: no longer read back as 1.0
    assert run(job_id) == "done"
    assert stub_generate.calls[-1].budget == Budget.tokens(1)
    assert job_row(job_id).budget == Budget.tokens(1)
    with session_scope() as s:
        usage = s.scalar(select(UsageRecord).where(UsageRecord.job_id == job_id))
        assert usage.budget == Budget.tokens(1) and usage.budget_unit == "tokens"


def test_attempt_cap_and_busy_and_stale_takeover(db):
    from service.core.db import session_scope
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


def test_generation_request_per_kind():
    from namm.spec import SUMMARIZE_INSTRUCTION
    from service.jobs.repository import ClaimedJob
    from workers.runner import generation_request

    from service.core.settings import ModelSettings

    model = ModelSettings(n_up=256)
    assert model.query_aware_max_questions == 1  # the default: one known question reads it first
    summary = generation_request(ClaimedJob(id="1", tenant_id=1, text="d", kind="summarize",
                                            instruction=None), model)
    assert summary.prompts() == ([SUMMARIZE_INSTRUCTION], None) and not summary.query_aware
    full = generation_request(ClaimedJob(id="1", tenant_id=1, text="d", kind="answer",
                                         instruction=None, questions=["q"], policy="full",
                                         budget=Budget.fraction(0.5)), model)
    assert full.questions == ("q",) and full.budget is None and full.n_up == 256
    assert full.query_aware  # its question is known: the memory reads with it in view


def test_query_aware_reading_follows_the_number_of_known_questions():
    from service.core.settings import ModelSettings
    from service.jobs.repository import ClaimedJob
    from workers.runner import generation_request

    def job(kind, questions):
        return ClaimedJob(id="1", tenant_id=1, text="d", kind=kind, instruction="Extract.", questions=questions)

    one, three = ModelSettings(), ModelSettings(query_aware_max_questions=3)
    assert generation_request(job("extract", ["a"]), one).query_aware  # questions known: extract too
    # two questions would read the document twice: once, question-agnostic, unless allowed
    assert not generation_request(job("answer", ["a", "b"]), one).query_aware
    assert generation_request(job("answer", ["a", "b"]), three).query_aware
    assert not generation_request(job("extract", []), three).query_aware  # nothing to show first
    assert not generation_request(job("answer", ["a"]), ModelSettings(query_aware_max_questions=0)).query_aware
    with pytest.raises(ValueError):
        ModelSettings(query_aware_max_questions=-1)


def test_sweeper_requeues_stale_running_jobs(db, monkeypatch):
    from service.core.db import session_scope
    from service.core.queue import queue_depths
    from service.models import Job, utcnow
    from workers.tasks import sweep

    job_id = make_job()
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            status="running", attempts=1, heartbeat_at=utcnow() - timedelta(hours=1)))
    assert sweep()["stale_running"] == 1
    assert job_row(job_id).status == "queued"
    assert queue_depths(("gpu",))["gpu"] == 1  # a real message in the SQLite broker


def test_api_and_worker_parent_never_import_torch():
    code = ("import sys, namm, namm.spec, service.api.app, service.api.routes.jobs, "
            "service.api.server, service.server, service.local, workers.celery_app, workers.tasks, "
            "workers.runner; from namm.spec import shipped_namm_budget; shipped_namm_budget(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_celery_configuration():
    from service.core.queue import broker_transport_options, make_celery
    from service.core.settings import Settings

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
