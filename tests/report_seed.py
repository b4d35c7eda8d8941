"""Known usage records for the report tests (API, CLI, dashboard): figures chosen so that every
total can be checked by hand. Times are UTC; New York is UTC-4 on these days (DST from March 8)."""

from __future__ import annotations

from datetime import datetime, timezone

from service.models import Document, Job, UsageRecord


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# (name, when, model, policy, tokens in/out, kv steps run/full, kv bytes run/full, cost, full
#  cost, estimated, method)
RECORDS_A = [
    ("r1", utc(2026, 3, 9, 23, 30), "m1", "namm", 1000, 100, 400.0, 1000.0, 40, 100, 1000, 1600, True),
    ("r2", utc(2026, 3, 10, 0, 30), "m1", "full", 2000, 50, 3000.0, 3000.0, 300, 300, 2500, 2500, False),
    ("r3", utc(2026, 3, 10, 12, 0), "m2", "h2o", 500, 10, 100.0, 200.0, 20, 40, 700, 650, True),
    # from before migration 0004: no KV counts, no counterfactual
    ("r4", utc(2026, 3, 11, 8, 0), "m1", "namm", 1000, 40, None, None, 10, 30, 300, None, False),
]
RECORDS_B = [
    ("r5", utc(2026, 3, 10, 10, 0), "m1", "namm", 9000, 900, 10.0, 90.0, 1, 9, 99_999, 100_000, True),
]
BATCH_ID = "00000000-0000-0000-0000-0000000000b1"


def add_job(session, tenant_id: int, when: datetime, policy: str = "namm", status: str = "done",
            batch_id: str | None = None) -> Job:
    doc = Document(tenant_id=tenant_id, content_type="text/plain", size_bytes=1, sha256="x",
                   text="x", created_at=when)
    session.add(doc)
    session.flush()
    job = Job(tenant_id=tenant_id, document_id=doc.id, status=status, kind="summarize",
              policy=policy, max_new_tokens=8, created_at=when, finished_at=when,
              batch_id=batch_id)
    session.add(job)
    session.flush()
    return job


def add_record(session, tenant_id: int, record: tuple, batch_id: str | None = None) -> UsageRecord:
    (_, when, model, policy, t_in, t_out, steps, steps_full, b_run, b_full, cost, full,
     estimated) = record
    job = add_job(session, tenant_id, when, policy, batch_id=batch_id)
    method = None if full is None else ("self" if policy == "full" else "kv_token_steps_rate:x:cpu")
    usage = UsageRecord(
        job_id=job.id, tenant_id=tenant_id, model=model, policy=policy, tokens_in=t_in,
        tokens_out=t_out, kv_kept_fraction=0.5, kv_bytes_peak=b_run, kv_bytes_full_peak=b_full,
        kv_token_steps=steps, kv_token_steps_full=steps_full, seconds=1.0, seconds_prefill=0.5,
        seconds_decode=0.25, seconds_policy=0.25, device="cpu", price_id="default",
        billed_device_seconds=2.0, cost_micro_usd=cost, full_cache_cost_micro_usd=full,
        counterfactual_method=method, counterfactual_estimated=estimated, created_at=when)
    session.add(usage)
    return usage


def seed(session, tenant_a: int, tenant_b: int) -> None:
    from service.models import ShadowRun

    from service.models import Batch

    # r3 summarised a file of a repository batch
    session.add(Batch(id=BATCH_ID, tenant_id=tenant_a, source={"kind": "path", "path": "/repo"},
                      policy="h2o", max_new_tokens=8, status="done"))
    session.flush()
    for record in RECORDS_A:
        usage = add_record(session, tenant_a, record,
                           batch_id=BATCH_ID if record[0] == "r3" else None)
        if record[0] == "r1":  # r1 was rerun with the full cache: measured 3 s and 1,900
            session.add(ShadowRun(
                job_id=usage.job_id, tenant_id=tenant_a, status="done", seconds_run=2.0,
                seconds_full=3.0, cost_run_micro_usd=1000, cost_full_micro_usd=1900,
                kv_token_steps_run=400.0, kv_token_steps_full=1000.0, answers_agree=True,
                answers_full=["x"], created_at=record[1], finished_at=record[1]))
    for record in RECORDS_B:
        add_record(session, tenant_b, record)
    add_job(session, tenant_a, utc(2026, 3, 10, 14, 0), status="failed")
    add_job(session, tenant_a, utc(2026, 3, 11, 9, 0), status="queued")
