"""Tenants, their API keys, documents (the text of an upload), jobs, results and usage records."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.models.base import BUDGET_CHECK, Base, HasBudget, JSONType, new_id, utcnow

class JobStatus(str, enum.Enum):
    # over its tenant's quota (service/jobs/admission.py): not active, not sent to the broker
    waiting = "waiting"
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.done, JobStatus.failed, JobStatus.cancelled)


FINISHED_STATUSES = tuple(s.value for s in JobStatus if s.finished)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # share of finished jobs rerun with the full cache to measure savings (service/jobs/shadow.py)
    shadow_rate: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """Only the sha256 of a key is stored; the raw key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # an admin key reads every tenant's reports (service/api/principal.py); tenant keys: own only
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class Document(Base):
    """The text extracted from an upload; kept apart from jobs so job listings stay light."""

    __tablename__ = "documents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str | None] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(HasBudget, Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_tenant_status_created", "tenant_id", "status", "created_at"),
                      CheckConstraint(BUDGET_CHECK, name="budget"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    instruction: Mapped[str | None] = mapped_column(Text)
    questions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    policy: Mapped[str] = mapped_column(String(32))
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    truncate: Mapped[bool] = mapped_column(Boolean, default=False)
    # keep the retention map (issue 21): which tokens the memory held at answer time
    retention: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    model: Mapped[str | None] = mapped_column(String(200))  # set by the worker that ran it
    # the repository batch this job summarises a file of (service/repos); NULL for plain jobs
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"),
                                                 index=True)
    # the stored document a question is answered from (service/memories); NULL: reads its text
    memory_id: Mapped[str | None] = mapped_column(
        ForeignKey("stored_documents.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    document: Mapped[Document] = relationship()
    result: Mapped[Result | None] = relationship(back_populates="job", uselist=False)
    usage: Mapped[UsageRecord | None] = relationship(back_populates="job", uselist=False)


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    text: Mapped[str] = mapped_column(Text)
    answers: Mapped[list[str]] = mapped_column(JSONType, default=list)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # [[text, share], ...] per document token (jobs.retention); deferred: one per token is large
    retention: Mapped[list | None] = mapped_column(JSONType, deferred=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result")


class UsageRecord(HasBudget, Base):
    """What one job did and cost, next to what a full KV cache would have cost.

    Work is counted exactly by namm (GenerationStats): tokens, KV token-steps of the run and of
    a full cache over the same tokens, kept entries per update, peak bytes of slots in use.
    Money is billed by work done at a measured device rate and the price version in force
    (service/jobs/pricing.py); the counterfactual names its method, and is NULL where none
    applies (rows from before revision 0004, whose counterfactual scaled the run's own seconds
    by its memory share). The `full` policy's record has no budget and a zero saving."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_tenant_created", "tenant_id", "created_at"),
                      CheckConstraint(BUDGET_CHECK, name="budget"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    policy: Mapped[str] = mapped_column(String(32))
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    kv_kept_fraction: Mapped[float] = mapped_column(Float)
    kv_bytes_peak: Mapped[int] = mapped_column(BigInteger)
    kv_bytes_full_peak: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    cost_micro_usd: Mapped[int] = mapped_column(BigInteger)
    full_cache_cost_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    seconds_prefill: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    seconds_decode: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    seconds_policy: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    device: Mapped[str] = mapped_column(String(100), default="unknown", server_default="unknown")
    kv_token_steps: Mapped[float | None] = mapped_column(Float)
    kv_token_steps_full: Mapped[float | None] = mapped_column(Float)
    kv_updates: Mapped[list | None] = mapped_column(JSONType)  # [[tokens read, before, after]]
    kv_bytes_allocated_peak: Mapped[int | None] = mapped_column(BigInteger)
    policy_entries_scored: Mapped[float | None] = mapped_column(Float)
    price_id: Mapped[str | None] = mapped_column(String(64))
    device_hour_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    billed_device_seconds: Mapped[float | None] = mapped_column(Float)
    counterfactual_method: Mapped[str | None] = mapped_column(String(200))
    counterfactual_estimated: Mapped[bool] = mapped_column(Boolean, default=False,
                                                          server_default=false())
    # a question answered from a stored document (service/memories): the document's tokens it
    # did not read again, and what re-reading them with the full cache would have cost (the
    # reuse saving, apart from the eviction saving above); NULL for every other job
    tokens_not_reread: Mapped[int | None] = mapped_column(BigInteger)
    reread_cost_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="usage")

    @property
    def saved_micro_usd(self) -> int | None:
        """Negative for a loss; None when no counterfactual applies."""
        if self.full_cache_cost_micro_usd is None:
            return None
        return self.full_cache_cost_micro_usd - self.cost_micro_usd
