"""Creating, reading, listing and cancelling jobs; every query is scoped to one tenant."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, selectinload

from service.models import Document, Job, JobStatus, new_id, utcnow
from service.schemas import (
    DocumentOut,
    JobOut,
    JobSummary,
    ResultOut,
    UsageOut,
)


@dataclass
class JobSpec:
    """A validated submission, ready to be stored."""

    tenant_id: int
    text: str
    content_type: str
    size_bytes: int
    filename: str | None
    kind: str
    instruction: str | None
    questions: list[str] = field(default_factory=list)
    policy: str = "namm"
    budget: float | None = None
    max_new_tokens: int = 128
    truncate: bool = False
    max_attempts: int = 3


def insert_jobs(session: Session, specs: list[JobSpec]) -> list[str]:
    """Bulk-insert documents and jobs (two multi-row INSERTs); returns the new job ids in order.
    The submission hot path: no ORM unit of work, ids made here."""
    if not specs:
        return []
    now = utcnow()
    documents, jobs = [], []
    for spec in specs:
        document_id, job_id = new_id(), new_id()
        documents.append({
            "id": document_id, "tenant_id": spec.tenant_id, "filename": spec.filename,
            "content_type": spec.content_type, "size_bytes": spec.size_bytes,
            "sha256": hashlib.sha256(spec.text.encode("utf-8")).hexdigest(), "text": spec.text,
            "created_at": now,
        })
        jobs.append({
            "id": job_id, "tenant_id": spec.tenant_id, "document_id": document_id,
            "status": JobStatus.queued.value, "progress": 0.0, "attempts": 0,
            "max_attempts": spec.max_attempts, "error": None, "kind": spec.kind,
            "instruction": spec.instruction, "questions": spec.questions, "policy": spec.policy,
            "budget": spec.budget, "max_new_tokens": spec.max_new_tokens,
            "truncate": spec.truncate, "created_at": now, "enqueued_at": now,
        })
    session.execute(insert(Document), documents)
    session.execute(insert(Job), jobs)
    return [job["id"] for job in jobs]


def get_job(session: Session, tenant_id: int, job_id: str) -> Job | None:
    return session.scalar(
        select(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id)
        .options(selectinload(Job.result), selectinload(Job.usage))
    )


def list_jobs(session: Session, tenant_id: int, *, status: str | None, offset: int,
              limit: int) -> tuple[list[Job], int]:
    where = [Job.tenant_id == tenant_id]
    if status:
        where.append(Job.status == status)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
    ).all()
    return list(rows), total


def cancel_job(session: Session, tenant_id: int, job_id: str) -> Job | None:
    """Cancel a queued or running job; a finished job is left as it is."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id,
               Job.status.in_((JobStatus.queued.value, JobStatus.running.value)))
        .values(status=JobStatus.cancelled.value, finished_at=utcnow(),
                error="cancelled by the client")
    )
    return get_job(session, tenant_id, job_id)


def document_summary(session: Session, document_id: str) -> DocumentOut | None:
    row = session.execute(
        select(Document.filename, Document.content_type, Document.size_bytes,
               func.length(Document.text)).where(Document.id == document_id)
    ).first()
    if row is None:
        return None
    return DocumentOut(filename=row[0], content_type=row[1], size_bytes=row[2], chars=row[3])


def job_out(job: Job, document: DocumentOut | None = None) -> JobOut:
    result = usage = None
    if job.result is not None:
        result = ResultOut(text=job.result.text, answers=job.result.answers, stats=job.result.stats)
    if job.usage is not None:
        u = job.usage
        saved_fraction = 0.0
        if u.kv_bytes_full_peak > 0:
            saved_fraction = 1.0 - u.kv_bytes_peak / u.kv_bytes_full_peak
        usage = UsageOut(
            model=u.model, policy=u.policy, budget=u.budget, tokens_in=u.tokens_in,
            tokens_out=u.tokens_out, kv_kept_fraction=u.kv_kept_fraction,
            kv_bytes_peak=u.kv_bytes_peak, kv_bytes_full_peak=u.kv_bytes_full_peak,
            kv_bytes_saved_fraction=saved_fraction, seconds=u.seconds,
            cost_micro_usd=u.cost_micro_usd, full_cache_cost_micro_usd=u.full_cache_cost_micro_usd,
            saved_micro_usd=u.full_cache_cost_micro_usd - u.cost_micro_usd,
        )
    return JobOut(
        id=job.id, status=job.status, progress=job.progress, attempts=job.attempts,
        error=job.error, kind=job.kind, instruction=job.instruction, questions=job.questions,
        policy=job.policy, budget=job.budget, max_new_tokens=job.max_new_tokens,
        truncate=job.truncate, model=job.model, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, document=document,
        result=result, usage=usage,
    )


def job_summary(job: Job) -> JobSummary:
    return JobSummary(id=job.id, status=job.status, progress=job.progress, kind=job.kind,
                      policy=job.policy, created_at=job.created_at, finished_at=job.finished_at)
