"""The `stored_documents` rows: every change of a stored document's state happens here.

Works inside the caller's session (the caller owns the transaction), like JobRepository.
Reads for clients are scoped to one tenant; another tenant's id looks like a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.jobs.repository import JobRepository, NewJob
from service.models import Document, Job, JobStatus, MemoryStatus, StoredDocument, utcnow

UNFINISHED = (JobStatus.waiting.value, JobStatus.queued.value, JobStatus.running.value)


@dataclass(frozen=True)
class ReadDone:
    """What a finished read measured, for its row."""

    model: str
    tokens: int
    kept_fraction: float
    bytes_stored: int
    full_cache_bytes: int
    storage_key: str
    kv_token_steps_full: float


class MemoryRepository:
    def __init__(self, session: Session):
        self.session = session

    # ---- create --------------------------------------------------------------------------
    def create(self, read: NewJob, *, n_up: int, ttl: timedelta, queued: int | None = None) -> StoredDocument:
        """A stored document and the job that reads it (kind `read`): one transaction."""
        read.kind = "read"
        job_id = JobRepository(self.session).create([read], queued=queued)[0]
        job = self.session.get(Job, job_id)
        now = utcnow()
        row = StoredDocument(tenant_id=read.tenant_id, document_id=job.document_id, read_job_id=job_id,
                             status=MemoryStatus.reading.value, policy=read.policy, n_up=n_up,
                             truncate=read.truncate, created_at=now, last_used_at=now,
                             expires_at=now + ttl, bytes_stored=0)
        row.budget = read.budget
        self.session.add(row)
        self.session.flush()
        job.memory_id = row.id
        return row

    def question(self, row: StoredDocument, job: NewJob) -> str:
        """A question job on `row`: its text is the stored document's; it waits while the
        document is being read."""
        job.document_id, job.memory_id = row.document_id, row.id
        job.policy, job.budget, job.truncate = row.policy, row.budget, row.truncate
        job.waits = row.status == MemoryStatus.reading.value
        return JobRepository(self.session).create([job], queued=None if job.waits else 1)[0]

    # ---- read (one tenant) -----------------------------------------------------------------
    def get(self, tenant_id: int, memory_id: str) -> StoredDocument | None:
        return self.session.scalar(select(StoredDocument).where(
            StoredDocument.id == memory_id, StoredDocument.tenant_id == tenant_id,
            StoredDocument.status != MemoryStatus.expired.value))

    def page(self, tenant_id: int, *, offset: int, limit: int) -> tuple[list[StoredDocument], int]:
        where = (StoredDocument.tenant_id == tenant_id, StoredDocument.status != MemoryStatus.expired.value)
        total = self.session.scalar(select(func.count()).select_from(StoredDocument).where(*where)) or 0
        rows = self.session.scalars(select(StoredDocument).where(*where)
                                    .order_by(StoredDocument.created_at.desc(), StoredDocument.id)
                                    .offset(offset).limit(limit)).all()
        return list(rows), total

    def document_meta(self, document_id: str) -> tuple[str | None, str, int]:
        row = self.session.execute(select(Document.filename, Document.content_type, Document.size_bytes)
                                   .where(Document.id == document_id)).one()
        return row[0], row[1], row[2]

    def tenant_bytes(self, tenant_id: int) -> int:
        return int(self.session.scalar(select(func.coalesce(func.sum(StoredDocument.bytes_stored), 0))
                                       .where(StoredDocument.tenant_id == tenant_id)) or 0)

    def questions_waiting(self, memory_id: str) -> int:
        return self.session.scalar(select(func.count()).select_from(Job).where(
            Job.memory_id == memory_id, Job.status.in_(UNFINISHED),
            Job.kind != "read")) or 0

    # ---- worker side -----------------------------------------------------------------------
    def for_worker(self, memory_id: str) -> StoredDocument | None:
        return self.session.get(StoredDocument, memory_id)

    def read_done(self, memory_id: str, done: ReadDone, ttl: timedelta) -> None:
        now = utcnow()
        self.session.execute(update(StoredDocument).where(StoredDocument.id == memory_id).values(
            status=MemoryStatus.ready.value, error=None, model=done.model, tokens=done.tokens,
            kept_fraction=done.kept_fraction, bytes_stored=done.bytes_stored,
            full_cache_bytes=done.full_cache_bytes, storage_key=done.storage_key,
            read_kv_token_steps_full=done.kv_token_steps_full, last_used_at=now, expires_at=now + ttl))

    def settle_reads(self) -> int:
        """Documents still `reading` whose read job ended without a memory (failed, cancelled,
        out of attempts): `failed`, with the job's error, so their questions fail instead of
        waiting. How many were settled."""
        rows = self.session.execute(
            select(StoredDocument.id, Job.error).join(Job, Job.id == StoredDocument.read_job_id)
            .where(StoredDocument.status == MemoryStatus.reading.value,
                   Job.status.in_((JobStatus.failed.value, JobStatus.cancelled.value)))).all()
        for memory_id, error in rows:
            self.session.execute(update(StoredDocument).where(
                StoredDocument.id == memory_id, StoredDocument.status == MemoryStatus.reading.value)
                .values(status=MemoryStatus.failed.value, error=(error or "the read did not finish")[:2000]))
        return len(rows)

    def stored(self, memory_id: str, key: str, nbytes: int) -> None:
        """A rebuilt memory's file."""
        self.session.execute(update(StoredDocument).where(StoredDocument.id == memory_id)
                             .values(storage_key=key, bytes_stored=nbytes))

    def touch(self, memory_id: str, ttl: timedelta) -> None:
        now = utcnow()
        self.session.execute(update(StoredDocument).where(StoredDocument.id == memory_id)
                             .values(last_used_at=now, expires_at=now + ttl))

    # ---- delete, expire, evict -------------------------------------------------------------
    def delete(self, tenant_id: int, memory_id: str) -> str | None:
        """Forget a stored document: its unfinished questions are cancelled, its text erased
        (finished jobs and their usage records stay, for billing), its row deleted. The storage
        key whose file the caller removes after the commit, or None if there was no such row."""
        row = self.get(tenant_id, memory_id)
        if row is None:
            return None
        key = row.storage_key or ""
        self._forget(row, "cancelled: its stored document was deleted")
        self.session.delete(row)
        return key

    def _forget(self, row: StoredDocument, why: str) -> None:
        self.session.execute(update(Job).where(Job.memory_id == row.id, Job.status.in_(UNFINISHED))
                             .values(status=JobStatus.cancelled.value, finished_at=utcnow(), error=why))
        self.session.execute(update(Document).where(Document.id == row.document_id).values(text=""))

    def expire(self, now: datetime, limit: int = 500) -> list[str]:
        """Ready or failed documents past their expiry: text erased, marked expired; the storage
        keys to delete."""
        rows = self.session.scalars(select(StoredDocument).where(
            StoredDocument.expires_at < now,
            StoredDocument.status.in_((MemoryStatus.ready.value, MemoryStatus.failed.value)))
            .limit(limit).with_for_update()).all()
        keys = []
        for row in rows:
            self._forget(row, "cancelled: its stored document expired")
            row.status, row.bytes_stored = MemoryStatus.expired.value, 0
            if row.storage_key:
                keys.append(row.storage_key)
            row.storage_key = None
        return keys

    def evict_over(self, max_total_bytes: int) -> list[str]:
        """Least recently used files beyond `max_total_bytes` in all: dropped from the store
        (the document stays; its next question rebuilds the memory from the text). The storage
        keys to delete."""
        total = int(self.session.scalar(select(func.coalesce(func.sum(StoredDocument.bytes_stored), 0))) or 0)
        keys = []
        if total <= max_total_bytes:
            return keys
        for row in self.session.scalars(select(StoredDocument).where(StoredDocument.bytes_stored > 0)
                                        .order_by(StoredDocument.last_used_at, StoredDocument.id)):
            if total <= max_total_bytes:
                break
            total -= row.bytes_stored
            keys.append(row.storage_key)
            row.bytes_stored, row.storage_key = 0, None
        return keys
