"""The job's state machine, in one place: every change of a job's status happens here.

    create ──> queued ──claim──> running ──complete──> done
      │          │  ▲              │ ├─────fail─────> failed   (the input, a crash, the time limit)
      │          │  └──requeue─────┘ └───cancel────> cancelled
      │          ├──cancel──> cancelled
      │          └──claim, attempts used up──> failed
      └──> waiting ──release──> queued    (over the tenant's quota: service/jobs/admission.py)
              └──cancel──> cancelled

`JobRepository` works inside the caller's session; the caller owns the transaction (one short
transaction per step: the API's request session, `session_scope()` in the workers). Reads for
clients are always scoped to one tenant. Claiming decides idempotency: a finished job is never
run again, a job another live worker runs is left to it, a job delivered too often is failed.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from namm.spec import DEFAULT_POLICY, Budget
from service.models import (
    FINISHED_STATUSES,
    Document,
    Job,
    JobStatus,
    Result,
    as_utc,
    budget_columns,
    new_id,
    utcnow,
)
from service.jobs.usage import usage_record

RUNNING = JobStatus.running.value
QUEUED = JobStatus.queued.value
WAITING = JobStatus.waiting.value


@dataclass
class NewJob:
    """A validated submission, ready to be stored."""

    tenant_id: int
    text: str
    content_type: str
    size_bytes: int
    filename: str | None
    kind: str
    instruction: str | None
    questions: list[str] = field(default_factory=list)
    policy: str = DEFAULT_POLICY
    budget: Budget | None = None
    max_new_tokens: int = 128
    truncate: bool = False
    max_attempts: int = 3
    # a question on a stored document (service/memories): its text is that document's, not new
    document_id: str | None = None
    memory_id: str | None = None
    waits: bool = False  # made waiting whatever the quota says (its stored document is being read)
    retention: bool = False  # keep the retention map (which tokens the memory held)


class ClaimOutcome(str, enum.Enum):
    claimed = "claimed"
    missing = "missing"
    finished = "finished"  # done, failed or cancelled: re-running is a no-op
    busy = "busy"  # running with a fresh heartbeat: another worker has it
    exhausted = "exhausted"  # attempt cap reached: the job is failed now
    waiting = "waiting"  # not released yet (over the tenant's quota): its release sends it


@dataclass
class ClaimedJob:
    """What a worker needs to run a job it has claimed."""

    id: str
    tenant_id: int
    text: str
    kind: str
    instruction: str | None
    questions: list[str] = field(default_factory=list)
    policy: str = DEFAULT_POLICY
    budget: Budget | None = None
    max_new_tokens: int = 128
    truncate: bool = False
    attempt: int = 1
    memory_id: str | None = None
    retention: bool = False


@dataclass(frozen=True)
class DocumentInfo:
    filename: str | None
    content_type: str
    size_bytes: int
    chars: int



class JobRepository:
    def __init__(self, session: Session):
        self.session = session

    # ---- create --------------------------------------------------------------------------
    def create(self, jobs: list[NewJob], *, queued: int | None = None) -> list[str]:
        """Bulk-insert documents and jobs (two multi-row INSERTs); the new ids, in order.
        The submission hot path: no ORM unit of work, ids made here. `queued`: how many of
        them, the first ones, are queued; the rest wait (None: all queued)."""
        if not jobs:
            return []
        now = utcnow()
        documents, rows = [], []
        for i, job in enumerate(jobs):
            waits = job.waits or (queued is not None and i >= queued)
            job_id = new_id()
            document_id = job.document_id or new_id()
            if job.document_id is None:
                documents.append({
                    "id": document_id, "tenant_id": job.tenant_id, "filename": job.filename,
                    "content_type": job.content_type, "size_bytes": job.size_bytes,
                    "sha256": hashlib.sha256(job.text.encode("utf-8")).hexdigest(), "text": job.text,
                    "created_at": now,
                })
            rows.append({
                "id": job_id, "tenant_id": job.tenant_id, "document_id": document_id,
                "status": WAITING if waits else QUEUED, "progress": 0.0, "attempts": 0,
                "max_attempts": job.max_attempts, "error": None, "kind": job.kind,
                "instruction": job.instruction, "questions": job.questions, "policy": job.policy,
                **budget_columns(job.budget), "max_new_tokens": job.max_new_tokens,
                "truncate": job.truncate, "created_at": now, "memory_id": job.memory_id,
                "retention": job.retention,
                "enqueued_at": None if waits else now,
            })
        if documents:
            self.session.execute(insert(Document), documents)
        self.session.execute(insert(Job), rows)
        return [row["id"] for row in rows]

    # ---- read (one tenant) -----------------------------------------------------------------
    def get(self, tenant_id: int, job_id: str) -> Job | None:
        return self.session.scalar(
            select(Job)
            .where(Job.id == job_id, Job.tenant_id == tenant_id)
            .options(selectinload(Job.result), selectinload(Job.usage))
        )

    def page(self, tenant_id: int, *, status: str | None, offset: int, limit: int,
             batch: str | None = "any") -> tuple[list[Job], int]:
        """`batch`: "any" (every job), None (jobs submitted on their own, not a batch's) or a
        batch id (that batch's jobs)."""
        where = [Job.tenant_id == tenant_id]
        if batch is None:
            where.append(Job.batch_id.is_(None))
        elif batch != "any":
            where.append(Job.batch_id == batch)
        if status:
            where.append(Job.status == status)
        total = self.session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = self.session.scalars(
            select(Job).where(*where).order_by(Job.created_at.desc(), Job.id)
            .offset(offset).limit(limit)
        ).all()
        return list(rows), total

    def queued_among(self, job_ids: list[str]) -> list[str]:
        """Those of `job_ids` that are queued, in order: the ones to send now (a waiting job is
        sent by its release)."""
        if not job_ids:
            return []
        queued = set(self.session.scalars(
            select(Job.id).where(Job.id.in_(job_ids), Job.status == QUEUED)))
        return [job_id for job_id in job_ids if job_id in queued]

    def document_info(self, document_id: str) -> DocumentInfo | None:
        row = self.session.execute(
            select(Document.filename, Document.content_type, Document.size_bytes,
                   func.length(Document.text)).where(Document.id == document_id)
        ).first()
        return None if row is None else DocumentInfo(*row)

    # ---- transitions -----------------------------------------------------------------------
    def cancel(self, tenant_id: int, job_id: str) -> Job | None:
        """waiting|queued|running -> cancelled; a finished job is left as it is."""
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.tenant_id == tenant_id,
                   Job.status.in_((WAITING, QUEUED, RUNNING)))
            .values(status=JobStatus.cancelled.value, finished_at=utcnow(),
                    error="cancelled by the client")
        )
        return self.get(tenant_id, job_id)

    def claim(self, job_id: str, *, stale_after_s: float) -> tuple[ClaimOutcome, ClaimedJob | None]:
        """queued (or running with a stale heartbeat) -> running, one more attempt."""
        # FOR UPDATE: two deliveries of one message wait for each other (PostgreSQL). The change
        # itself is a compare-and-set on the status and attempts read here, so a claimer that
        # read an old state (SQLite, where FOR UPDATE does nothing) changes nothing
        job = self.session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            return ClaimOutcome.missing, None
        if job.status in FINISHED_STATUSES:
            return ClaimOutcome.finished, None
        if job.status == WAITING:
            return ClaimOutcome.waiting, None
        now = utcnow()
        if job.status == RUNNING and self._heartbeat_is_fresh(job, now, stale_after_s):
            return ClaimOutcome.busy, None
        if job.attempts >= job.max_attempts:
            error = (f"gave up after {job.attempts} attempts: the worker running the job was "
                     "lost (crash, out of memory or time limit) each time")
            if not self._set_if_unchanged(job, status=JobStatus.failed.value, error=error,
                                          finished_at=now):
                return ClaimOutcome.busy, None
            return ClaimOutcome.exhausted, None
        attempt = job.attempts + 1
        if not self._set_if_unchanged(job, attempts=attempt, status=RUNNING, started_at=now,
                                      heartbeat_at=now, progress=0.0, error=None):
            return ClaimOutcome.busy, None  # another claimer got there first
        text = self.session.scalar(select(Document.text).where(Document.id == job.document_id))
        return ClaimOutcome.claimed, ClaimedJob(
            id=job.id, tenant_id=job.tenant_id, text=text or "", kind=job.kind,
            instruction=job.instruction, questions=list(job.questions or []), policy=job.policy,
            budget=job.budget, max_new_tokens=job.max_new_tokens, truncate=job.truncate,
            attempt=attempt, memory_id=job.memory_id, retention=bool(job.retention),
        )

    def unclaim(self, job_id: str, attempt: int) -> bool:
        """running -> queued, the attempt given back: a job claimed to join a batch it did not
        fit (workers/batching.py). Only if it is still as that claim left it."""
        result = self.session.execute(
            update(Job).where(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)
            .values(status=QUEUED, attempts=attempt - 1, started_at=None, heartbeat_at=None))
        return (result.rowcount or 0) == 1

    def _set_if_unchanged(self, job: Job, **values: Any) -> bool:
        """Write `values` only if the row still has the status and attempts `job` was read
        with; True when it did (the object is then up to date too)."""
        result = self.session.execute(
            update(Job).where(Job.id == job.id, Job.status == job.status,
                              Job.attempts == job.attempts)
            .values(**values).execution_options(synchronize_session=False))
        if (result.rowcount or 0) != 1:
            return False
        for name, value in values.items():
            set_committed_value(job, name, value)
        return True

    @staticmethod
    def _heartbeat_is_fresh(job: Job, now: datetime, stale_after_s: float) -> bool:
        beat = as_utc(job.heartbeat_at)
        return beat is not None and now - beat < timedelta(seconds=stale_after_s)

    def heartbeat(self, job_id: str, progress: float | None = None) -> bool:
        """A running job is alive (and this far); False when it no longer runs (cancelled)."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, progress))
        result = self.session.execute(
            update(Job).where(Job.id == job_id, Job.status == RUNNING).values(**values))
        return (result.rowcount or 0) > 0

    def fail(self, job_id: str, message: str) -> None:
        """running -> failed, with the message the client will read."""
        self.session.execute(
            update(Job).where(Job.id == job_id, Job.status == RUNNING)
            .values(status=JobStatus.failed.value, error=message[:2000], finished_at=utcnow())
        )

    def complete(self, job_id: str, model_name: str, output: dict, prices) -> bool:
        """running -> done: result, usage record and status together (the caller's transaction).

        `output` is namm's GenerationResult.to_dict(). False when the job stopped running
        meanwhile (cancelled): nothing is written then. A second result for the same job
        violates a unique constraint (IntegrityError) and the caller's transaction rolls back."""
        job = self.session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status != RUNNING:
            return False
        finished = utcnow()
        stats = {k: v for k, v in output.items() if k not in ("text", "answers", "retention")}
        self.session.add(Result(job_id=job.id, text=output.get("text") or "",
                                answers=list(output.get("answers") or []), stats=stats,
                                retention=output.get("retention")))
        self.session.add(usage_record(job_id=job.id, tenant_id=job.tenant_id, model=model_name,
                                      policy=job.policy, budget=job.budget, output=output,
                                      prices=prices, finished_at=finished))
        job.status = JobStatus.done.value
        job.progress = 1.0
        job.model = model_name
        job.finished_at = finished
        job.error = None
        return True

    def release(self, job_ids: list[str]) -> list[str]:
        """waiting -> queued (the caller holds the tenant's quota lock and chose them); the ids
        released, to send after the commit: one cancelled meanwhile is not among them."""
        if not job_ids:
            return []
        released = self.session.execute(
            update(Job).where(Job.id.in_(job_ids), Job.status == WAITING)
            .values(status=QUEUED, enqueued_at=utcnow()).returning(Job.id))
        moved = set(released.scalars())
        return [job_id for job_id in job_ids if job_id in moved]

    def requeue_stale_running(self, *, stale_after_s: float) -> list[str]:
        """running without a heartbeat (its worker is gone) -> queued; the attempt cap still
        applies at the next claim. Returns the ids to enqueue again."""
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        ids = list(self.session.scalars(
            select(Job.id).where(Job.status == RUNNING, Job.heartbeat_at < cutoff)))
        if ids:
            self.session.execute(
                update(Job).where(Job.id.in_(ids), Job.status == RUNNING)
                .values(status=QUEUED, enqueued_at=utcnow()))
        return ids

    def requeue_lost_queued(self, *, requeue_after_s: float, limit: int = 500) -> list[str]:
        """queued for longer than `requeue_after_s` (its message was lost, e.g. the broker was
        down at submission): enqueued again. Returns the ids to enqueue."""
        cutoff = utcnow() - timedelta(seconds=requeue_after_s)
        ids = list(self.session.scalars(
            select(Job.id).where(Job.status == QUEUED, Job.enqueued_at < cutoff).limit(limit)))
        if ids:
            self.session.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=utcnow()))
        return ids
