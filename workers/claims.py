"""Taking a job for execution, and storing how it ended; each step is one short transaction.

These functions decide idempotency: a finished job is never run again, a job another live
worker is running is left to it, and a job delivered too many times is failed.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from service.db import session_scope
from service.models import FINISHED_STATUSES, Document, Job, JobStatus, Result, UsageRecord, utcnow
from service.pricing import job_cost
from service.settings import get_settings

logger = logging.getLogger(__name__)


class ClaimOutcome(str, enum.Enum):
    claimed = "claimed"
    missing = "missing"
    finished = "finished"  # done, failed or cancelled: re-running is a no-op
    busy = "busy"  # running with a fresh heartbeat: another worker has it
    exhausted = "exhausted"  # attempt cap reached: the job is failed now


@dataclass
class ClaimedJob:
    id: str
    tenant_id: int
    text: str
    kind: str
    instruction: str | None
    questions: list[str] = field(default_factory=list)
    policy: str = "namm"
    budget: float | int | None = None
    max_new_tokens: int = 128
    truncate: bool = False
    attempt: int = 1


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything stored is UTC
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def heartbeat_is_fresh(job: Job, now: datetime | None = None) -> bool:
    now = now or utcnow()
    beat = _aware(job.heartbeat_at)
    return beat is not None and now - beat < timedelta(seconds=get_settings().worker.stale_after_s)


def claim(job_id: str) -> tuple[ClaimOutcome, ClaimedJob | None]:
    with session_scope() as session:
        # FOR UPDATE: two deliveries of one message cannot both claim it (PostgreSQL); SQLite
        # serialises writers anyway
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            return ClaimOutcome.missing, None
        if job.status in FINISHED_STATUSES:
            return ClaimOutcome.finished, None
        if job.status == JobStatus.running.value and heartbeat_is_fresh(job):
            return ClaimOutcome.busy, None
        if job.attempts >= job.max_attempts:
            job.status = JobStatus.failed.value
            job.error = (f"gave up after {job.attempts} attempts: the worker running the job was "
                         "lost (crash, out of memory or time limit) each time")
            job.finished_at = utcnow()
            return ClaimOutcome.exhausted, None
        now = utcnow()
        job.attempts += 1
        job.status = JobStatus.running.value
        job.started_at = now
        job.heartbeat_at = now
        job.progress = 0.0
        job.error = None
        text = session.scalar(select(Document.text).where(Document.id == job.document_id))
        budget = job.budget
        if budget is not None and budget > 1:
            budget = int(budget)  # an integer budget means tokens per layer
        return ClaimOutcome.claimed, ClaimedJob(
            id=job.id, tenant_id=job.tenant_id, text=text or "", kind=job.kind,
            instruction=job.instruction, questions=list(job.questions or []), policy=job.policy,
            budget=budget, max_new_tokens=job.max_new_tokens, truncate=job.truncate,
            attempt=job.attempts,
        )


def touch(job_id: str, progress: float | None = None) -> bool:
    """Heartbeat (and progress); False when the job is no longer running (e.g. cancelled)."""
    values: dict = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    with session_scope() as session:
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value).values(**values)
        )
        return (result.rowcount or 0) > 0


def fail(job_id: str, message: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value)
            .values(status=JobStatus.failed.value, error=message[:2000], finished_at=utcnow())
        )


def store_result(job_id: str, model_name: str, output: dict) -> bool:
    """Result, usage record and the job's `done` status in one transaction.

    `output` is namm's GenerationResult.to_dict(). False when the job stopped running
    meanwhile (cancelled) or a result already exists: nothing is written then.
    """
    prices = get_settings().prices
    try:
        with session_scope() as session:
            job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
            if job is None or job.status != JobStatus.running.value:
                return False
            tokens_in = int(output["tokens_in"])
            tokens_out = int(output["tokens_out"])
            seconds = float(output["seconds"])
            kv_peak = int(output["kv_bytes_peak"])
            kv_full = int(output["kv_bytes_full_peak"])
            cost = job_cost(prices, tokens_in=tokens_in, tokens_out=tokens_out, seconds=seconds,
                            kv_bytes_peak=kv_peak, kv_bytes_full_peak=kv_full)
            stats = {k: v for k, v in output.items() if k not in ("text", "answers")}
            session.add(Result(job_id=job.id, text=output.get("text") or "",
                               answers=list(output.get("answers") or []), stats=stats))
            session.add(UsageRecord(
                job_id=job.id, tenant_id=job.tenant_id, model=model_name, policy=job.policy,
                budget=job.budget, tokens_in=tokens_in, tokens_out=tokens_out,
                kv_kept_fraction=float(output["kv_kept_fraction"]), kv_bytes_peak=kv_peak,
                kv_bytes_full_peak=kv_full, seconds=seconds, cost_micro_usd=cost.cost_micro_usd,
                full_cache_cost_micro_usd=cost.full_cache_cost_micro_usd,
            ))
            job.status = JobStatus.done.value
            job.progress = 1.0
            job.model = model_name
            job.finished_at = utcnow()
            job.error = None
        return True
    except IntegrityError:
        logger.info("job %s already has a result; nothing stored", job_id)
        return False
