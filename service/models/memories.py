"""Stored documents: a document read once, its compressed memory kept for later questions
(issue 20; migration 0008).

One row per stored document. Its text is the `documents` row it names (kept, so a lost or
evicted memory is rebuilt from it); the memory file lives in the memory store
(service/memories/store.py) under `storage_key`. The read is an ordinary job of kind `read`
(`read_job_id`): quotas, progress, cancellation, recovery and billing work as for any job.
Questions are jobs too (`jobs.memory_id`).

    reading ──read job done──> ready ──(ttl passes)──> expired   (file and text deleted)
       └──read job failed──> failed   ready: the file may be evicted to free space
                                       (`stored` false); the next question rebuilds it
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import BUDGET_CHECK, Base, HasBudget, new_id, utcnow


class MemoryStatus(str, enum.Enum):
    reading = "reading"
    ready = "ready"
    failed = "failed"
    expired = "expired"


class StoredDocument(HasBudget, Base):
    __tablename__ = "stored_documents"
    __table_args__ = (Index("ix_stored_documents_tenant_created", "tenant_id", "created_at"),
                      Index("ix_stored_documents_last_used", "last_used_at"),
                      CheckConstraint(BUDGET_CHECK, name="budget"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    read_job_id: Mapped[str | None] = mapped_column(String(36))  # a plain id: jobs point here
    status: Mapped[str] = mapped_column(String(16), default=MemoryStatus.reading.value, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(String(32))
    n_up: Mapped[int] = mapped_column(Integer)
    truncate: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str | None] = mapped_column(String(200))
    tokens: Mapped[int | None] = mapped_column(Integer)
    kept_fraction: Mapped[float | None] = mapped_column(Float)
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)  # 0 while none is stored
    full_cache_bytes: Mapped[int | None] = mapped_column(BigInteger)
    storage_key: Mapped[str | None] = mapped_column(String(200))
    # the read's full-cache work, so each question's counterfactual (re-reading the document
    # with the full cache) is priced from measured counts
    read_kv_token_steps_full: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
