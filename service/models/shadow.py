"""Shadow runs: full-cache reruns of sampled jobs (logic: service/jobs/shadow.py; migration 0004)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, JSONType, utcnow

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class ShadowRun(Base):
    """The full-cache rerun of one finished job, and what it measured."""

    __tablename__ = "shadow_runs"
    __table_args__ = (Index("ix_shadow_runs_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    # the job's own run (from its usage record) against the full-cache rerun, both measured
    seconds_run: Mapped[float | None] = mapped_column(Float)
    seconds_full: Mapped[float | None] = mapped_column(Float)
    cost_run_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    cost_full_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    kv_token_steps_run: Mapped[float | None] = mapped_column(Float)
    kv_token_steps_full: Mapped[float | None] = mapped_column(Float)
    answers_agree: Mapped[bool | None] = mapped_column(Boolean)
    answers_full: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
