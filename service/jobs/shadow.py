"""Shadow runs: a sample of a tenant's finished jobs is run again with the full cache, at low
priority, to measure the real difference (time, billed work, answers) instead of estimating it.

`tenants.shadow_rate` (0 by default: off) is the share of the tenant's finished jobs with an
evicting policy that get a shadow run. The worker that finished the job draws the sample and
queues the run (workers/shadow.py: queue `gpu`, priority 9, behind every job). The shadow is
never billed to the tenant; reports show it apart, as measured.
`python -m service.jobs.shadow_rate acme 0.05` sets a tenant's rate.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from namm.spec import NON_EVICTING_POLICIES
from service.models import DONE, FAILED, QUEUED, RUNNING, Job, ShadowRun, Tenant, utcnow


def draw_shadow(session: Session, job_id: str, rng: random.Random | None = None) -> bool:
    """After a job is done: sample it for a shadow run at its tenant's rate (a queued row is
    written; the caller enqueues it after the commit). False when not sampled."""
    job = session.get(Job, job_id)
    if job is None or job.status != "done" or job.policy in NON_EVICTING_POLICIES:
        return False
    rate = session.scalar(select(Tenant.shadow_rate).where(Tenant.id == job.tenant_id)) or 0.0
    if rate <= 0 or (rng or random).random() >= rate:
        return False
    if session.scalar(select(ShadowRun.id).where(ShadowRun.job_id == job_id)) is not None:
        return False
    session.add(ShadowRun(job_id=job_id, tenant_id=job.tenant_id))
    return True


def claim(session: Session, job_id: str) -> bool:
    """queued -> running, once (compare-and-set: a second delivery finds it taken)."""
    taken = session.execute(update(ShadowRun).where(
        ShadowRun.job_id == job_id, ShadowRun.status == QUEUED).values(status=RUNNING))
    return taken.rowcount == 1


def finish(session: Session, job_id: str, status: str, **measured: Any) -> None:
    """running -> done | failed, with what the rerun measured (or its error)."""
    session.execute(update(ShadowRun).where(
        ShadowRun.job_id == job_id, ShadowRun.status == RUNNING).values(
        status=status, finished_at=utcnow(), **measured))


def normalise(answer: str) -> str:
    return " ".join(answer.split()).strip().lower()


def answers_agree(run: list[str], full: list[str]) -> bool:
    """The same answers, up to case and white space."""
    return len(run) == len(full) and all(normalise(a) == normalise(b) for a, b in zip(run, full))


def shadow_summary(session: Session, *, start: datetime, end: datetime,
                   tenant_id: int | None, batch_id: str | None = None) -> dict[str, Any]:
    """Shadow runs of jobs that finished in [start, end): measured, shown apart in reports."""
    stmt = (select(ShadowRun).join(Job, Job.id == ShadowRun.job_id)
            .where(Job.finished_at >= start, Job.finished_at < end))
    if tenant_id is not None:
        stmt = stmt.where(ShadowRun.tenant_id == tenant_id)
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    rows = list(session.scalars(stmt))
    done = [r for r in rows if r.status == DONE]
    cost_run = sum(r.cost_run_micro_usd or 0 for r in done)
    cost_full = sum(r.cost_full_micro_usd or 0 for r in done)
    return {
        "measured": True, "runs": len(rows), "done": len(done),
        "failed": sum(r.status == FAILED for r in rows),
        "pending": sum(r.status in (QUEUED, RUNNING) for r in rows),
        "answers_agree": sum(bool(r.answers_agree) for r in done),
        "seconds_run": round(sum(r.seconds_run or 0.0 for r in done), 6),
        "seconds_full": round(sum(r.seconds_full or 0.0 for r in done), 6),
        "kv_token_steps_run": sum(r.kv_token_steps_run or 0.0 for r in done),
        "kv_token_steps_full": sum(r.kv_token_steps_full or 0.0 for r in done),
        "cost_run_micro_usd": cost_run, "cost_full_micro_usd": cost_full,
        "saved_micro_usd": cost_full - cost_run,
    }


def set_rate(session: Session, tenant_name: str, rate: float) -> Tenant:
    if not 0.0 <= rate <= 1.0:
        raise ValueError("the shadow rate is a share of jobs, from 0 to 1")
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise LookupError(f"no tenant named {tenant_name!r}")
    tenant.shadow_rate = rate
    return tenant

