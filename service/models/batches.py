"""ORM models of repository batches and schedules (SQLAlchemy 2, typed; schema in migration 0003).

A batch is one run over one repository: its files (the ones ingestion kept, in reading order),
the files it skipped and why, progress counters, and the overview aggregated from the files'
summaries. Each file is summarised by an ordinary job (`jobs.batch_id` names the batch), so
usage and cost records of a batch are the usage records of its jobs.

Foreign keys run one way only (no cycles, so SQLite needs no ALTER): batches -> schedules,
jobs -> batches, batch_files -> batches/jobs. `Schedule.running_batch_id` and
`Batch.overview_job_id` are plain ids.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import BUDGET_CHECK, Base, HasBudget, JSONType, new_id, utcnow


class BatchStatus(str, enum.Enum):
    queued = "queued"  # stored, waiting for ingestion (queue `cpu`)
    running = "running"  # files ingested, per-file jobs on queue `gpu`
    aggregating = "aggregating"  # every file finished; the overview is being written
    done = "done"
    failed = "failed"  # the source could not be read (a bad archive, a failed clone)
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (BatchStatus.done, BatchStatus.failed, BatchStatus.cancelled)


BATCH_FINISHED = tuple(s.value for s in BatchStatus if s.finished)


class FileStatus(str, enum.Enum):
    # a queued file whose job waits for the tenant's quota is shown as "waiting" (the job's
    # status says so: service/jobs/admission.py, service/api/batch_schemas.py `file_out`)
    queued = "queued"
    done = "done"
    failed = "failed"  # after the retry cap; the batch goes on
    cancelled = "cancelled"


class Schedule(HasBudget, Base):
    """A cron expression in a time zone that beat turns into batches, one run at a time."""

    __tablename__ = "schedules"
    __table_args__ = (CheckConstraint(BUDGET_CHECK, name="budget"),
                      Index("ix_schedules_enabled_next_run", "enabled", "next_run_at"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    source: Mapped[dict[str, Any]] = mapped_column(JSONType)  # {"kind": "path"|"git", ...}
    tasks: Mapped[list[str]] = mapped_column(JSONType, default=list)
    questions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    policy: Mapped[str] = mapped_column(String(32))
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    running_batch_id: Mapped[str | None] = mapped_column(String(36))  # one run at a time
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Batch(HasBudget, Base):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_created", "tenant_id", "created_at"),
                      CheckConstraint(BUDGET_CHECK, name="budget"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    schedule_id: Mapped[str | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL"), index=True)
    # {"kind": "archive", "filename"} | {"kind": "path", "path"} | {"kind": "git", "url", "ref"}
    source: Mapped[dict[str, Any]] = mapped_column(JSONType)
    tasks: Mapped[list[str]] = mapped_column(JSONType, default=list)  # summaries, overview
    questions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    policy: Mapped[str] = mapped_column(String(32))
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.queued.value, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    files_skipped: Mapped[int] = mapped_column(Integer, default=0)
    tokens_read: Mapped[int] = mapped_column(BigInteger, default=0)
    overview: Mapped[str | None] = mapped_column(Text)
    overview_job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # touched while a worker clones and reads the source: the beat tick resends the ingestion
    # of a queued batch only when nobody has touched it for `worker.stale_after_s`
    ingest_heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BatchUpload(Base):
    """An uploaded archive, kept in the database until ingestion has read it (no shared volume
    between the API and the workers is needed)."""

    __tablename__ = "batch_uploads"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"),
                                          primary_key=True)
    filename: Mapped[str] = mapped_column(String(500))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class BatchFile(Base):
    """One file ingestion kept; its summary is the result of `job_id` (one job per attempt)."""

    __tablename__ = "batch_files"
    __table_args__ = (UniqueConstraint("batch_id", "path", name="uq_batch_files_batch_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # reading order (package, then imports)
    path: Mapped[str] = mapped_column(String(1000))
    language: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.queued.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"),
                                               unique=True)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    tokens: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SkippedFile(Base):
    __tablename__ = "batch_skipped_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    reason: Mapped[str] = mapped_column(String(32))  # gitignored, binary, vendored, ...
