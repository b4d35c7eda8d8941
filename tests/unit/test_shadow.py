"""Shadow runs on SQLite with the real broker (kombu on SQLite): a finished job of a tenant with
a shadow rate is queued for a full-cache rerun at the lowest priority; the rerun is measured
(seconds, billed work, answer agreement), stored apart, run once, and shown in reports as
measured. `stub_generate` stands in for namm.generate (the real model runs in tests/integration)."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from namm.errors import ContextTooLongError
from namm.spec import Budget
from tests.sqlite_service import sqlite_service


@pytest.fixture
def db(tmp_path):
    with sqlite_service(tmp_path, NAMM_WORKER__PROGRESS_INTERVAL_S="0"):
        yield


@dataclass
class Out:
    answers: list = field(default_factory=lambda: ["The code is 4711."])
    seconds_prefill: float = 1.0
    steps: float = 300.0

    def to_dict(self):
        return {"text": self.answers[0], "answers": self.answers, "policy": "x", "budget": None,
                "tokens_in": 1000, "tokens_out": 4, "kv_kept_per_layer": [],
                "kv_kept_fraction": 0.5, "kv_bytes_peak": 50, "kv_bytes_full_peak": 100,
                "kv_token_steps": self.steps, "kv_token_steps_full": 600.0, "kv_updates": [],
                "seconds_prefill": self.seconds_prefill, "seconds_decode": 1.0,
                "seconds_policy": 0.5, "seconds": 2.5, "truncated": False}


class StubModel:
    name = "stub-model"


def make_job(rate: float, policy: str = "surprisal") -> str:
    from service.api.keys import get_or_create_tenant
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository, NewJob
    from service.jobs.shadow import set_rate

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "t")
        set_rate(s, "t", rate)
        return JobRepository(s).create([NewJob(
            tenant_id=tenant.id, text="The vault code is 4711.", content_type="text/plain",
            size_bytes=23, filename=None, kind="answer", instruction=None,
            questions=["What is the code?"], policy=policy,
            budget=None if policy == "full" else Budget.fraction(0.5), max_new_tokens=8)])[0]


def run_job(job_id):
    from workers.runner import run_job

    return run_job(job_id, load_model=StubModel, generate=lambda lm, req, progress=None: Out())


def shadow_row(job_id):
    from service.core.db import session_scope
    from service.models import ShadowRun

    with session_scope() as s:
        return s.scalar(select(ShadowRun).where(ShadowRun.job_id == job_id))


def test_sampled_job_is_rerun_with_the_full_cache_and_measured(db):
    from service.core.queue import queue_depths
    from workers.shadow import run_shadow

    job_id = make_job(rate=1.0)
    assert run_job(job_id) == "done"
    row = shadow_row(job_id)
    assert row.status == "queued"
    assert queue_depths(("gpu",))["gpu"] == 1  # the rerun's message, in the real broker
    requests = []

    def full_generate(lm, request, progress=None):
        requests.append(request)
        return Out(answers=["the code is  4711."], seconds_prefill=3.0, steps=600.0)

    assert run_shadow(job_id, load_model=StubModel, generate=full_generate) == "done"
    assert requests[0].policy == "full" and requests[0].budget is None
    row = shadow_row(job_id)
    assert row.status == "done" and row.answers_agree  # case and spaces aside
    assert row.seconds_run == 2.5 and row.seconds_full == 4.0  # prefill + decode (+ policy)
    # no rate for the stub model: both billed their measured prefill + decode seconds at the
    # default 700 micro-USD per second, plus 100 + 1.2 for the tokens
    assert row.cost_run_micro_usd == 1501 and row.cost_full_micro_usd == 2901
    assert row.kv_token_steps_run == 300 and row.kv_token_steps_full == 600
    # once only
    assert run_shadow(job_id, load_model=StubModel, generate=full_generate) == "skipped"
    assert len(requests) == 1


def test_disagreement_and_unreadable_documents_are_recorded(db):
    from workers.shadow import run_shadow

    a, b = make_job(rate=1.0), make_job(rate=1.0)
    run_job(a), run_job(b)
    assert run_shadow(a, load_model=StubModel,
                      generate=lambda lm, r, progress=None: Out(answers=["4712"])) == "done"
    assert shadow_row(a).answers_agree is False and shadow_row(a).answers_full == ["4712"]

    def too_long(lm, request, progress=None):
        raise ContextTooLongError("input needs 9000 tokens")

    assert run_shadow(b, load_model=StubModel, generate=too_long) == "failed"
    assert "ContextTooLongError" in shadow_row(b).error


def test_no_shadow_at_rate_zero_nor_for_the_full_cache(db):
    off = make_job(rate=0.0)
    assert run_job(off) == "done"
    full = make_job(rate=1.0, policy="full")  # the same tenant, now sampling every job
    assert run_job(full) == "done"
    assert shadow_row(off) is None and shadow_row(full) is None


def test_rate_is_a_share(db):
    from service.core.db import session_scope
    from service.jobs.shadow import set_rate

    make_job(rate=0.0)
    with session_scope() as s, pytest.raises(ValueError, match="from 0 to 1"):
        set_rate(s, "t", 1.5)


def test_reports_show_shadow_runs_apart_as_measured(db):
    from service.core.db import session_scope
    from service.reports.cost import build_report, parse_query
    from workers.shadow import run_shadow

    job_id = make_job(rate=1.0)
    run_job(job_id)
    run_shadow(job_id, load_model=StubModel,
               generate=lambda lm, r, progress=None: Out(seconds_prefill=3.0, steps=600.0))
    today = datetime.now(timezone.utc).date()
    with session_scope() as s:
        report = build_report(s, parse_query(from_=str(today - timedelta(days=1)),
                                             to=str(today), group_by="policy", tz="UTC",
                                             tenant_id=None))
    shadow = report["shadow"]
    assert shadow["measured"] and shadow["runs"] == 1 and shadow["done"] == 1
    assert shadow["answers_agree"] == 1 and shadow["saved_micro_usd"] == 2901 - 1501
    assert shadow["seconds_run"] == 2.5 and shadow["seconds_full"] == 4.0
