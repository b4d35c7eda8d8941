"""Per-tenant quotas (issue 13): jobs queued or running at once, and tokens per UTC day.

Defaults for every tenant come from settings (`NAMM_QUOTAS__MAX_ACTIVE_JOBS`,
`NAMM_QUOTAS__MAX_TOKENS_PER_DAY`; unset: unlimited); a row in `tenant_quotas` (migration
0005, set by an admin key: PUT /v1/admin/tenants/{id}/quotas) overrides them for one tenant.
A submission over a quota is answered 429 with Retry-After: the active-jobs quota frees up as
jobs finish, the daily tokens at the next UTC midnight.

Checked when a batch of submissions is stored (service/api/intake.py), counting the batch's
own new jobs. Submissions are stored by one LitServe inference worker at a time by default
(`api.inference_workers` = 1), so the count is exact; with several, a tenant may go over its
active-jobs quota by at most one batch per extra worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.jobs.models import Base, Job, JobStatus, UsageRecord, utcnow

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)
ACTIVE_RETRY_AFTER_S = 30


class TenantQuota(Base):
    """One tenant's quotas; NULL: the settings' default for that quota."""

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           primary_key=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class Limits:
    max_active_jobs: int | None
    max_tokens_per_day: int | None


@dataclass(frozen=True)
class OverQuota:
    message: str
    retry_after_s: int


def limits_for(session: Session, tenant_id: int, defaults) -> Limits:
    row = session.get(TenantQuota, tenant_id)
    return Limits(
        max_active_jobs=row.max_active_jobs if row and row.max_active_jobs is not None
        else defaults.max_active_jobs,
        max_tokens_per_day=row.max_tokens_per_day if row and row.max_tokens_per_day is not None
        else defaults.max_tokens_per_day,
    )


def set_limits(session: Session, tenant_id: int, *, max_active_jobs: int | None,
               max_tokens_per_day: int | None) -> TenantQuota:
    row = session.get(TenantQuota, tenant_id)
    if row is None:
        row = TenantQuota(tenant_id=tenant_id)
        session.add(row)
    row.max_active_jobs = max_active_jobs
    row.max_tokens_per_day = max_tokens_per_day
    row.updated_at = utcnow()
    session.flush()
    return row


def active_jobs(session: Session, tenant_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))) or 0


def tokens_today(session: Session, tenant_id: int, now: datetime | None = None) -> int:
    midnight = datetime.combine((now or utcnow()).date(), time.min, tzinfo=timezone.utc)
    return int(session.scalar(
        select(func.coalesce(func.sum(UsageRecord.tokens_in + UsageRecord.tokens_out), 0))
        .where(UsageRecord.tenant_id == tenant_id, UsageRecord.created_at >= midnight)) or 0)


def _seconds_to_midnight(now: datetime) -> int:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), time.min, tzinfo=timezone.utc)
    return max(1, int((tomorrow - now).total_seconds()) + 1)


class QuotaGate:
    """Admits new jobs tenant by tenant, counting the ones admitted so far."""

    def __init__(self, session_factory, defaults):
        self._session_factory = session_factory
        self._defaults = defaults
        self._state: dict[int, tuple[Limits, int, int]] = {}  # limits, active, tokens today

    def _load(self, tenant_id: int) -> tuple[Limits, int, int]:
        if tenant_id not in self._state:
            with self._session_factory() as session:
                limits = limits_for(session, tenant_id, self._defaults)
                active = (active_jobs(session, tenant_id)
                          if limits.max_active_jobs is not None else 0)
                tokens = (tokens_today(session, tenant_id)
                          if limits.max_tokens_per_day is not None else 0)
            self._state[tenant_id] = (limits, active, tokens)
        return self._state[tenant_id]

    def admit(self, tenant_id: int) -> OverQuota | None:
        """None (and one more active job counted), or why the job is refused."""
        limits, active, tokens = self._load(tenant_id)
        if limits.max_tokens_per_day is not None and tokens >= limits.max_tokens_per_day:
            return OverQuota(f"daily token quota reached ({tokens} of "
                             f"{limits.max_tokens_per_day} tokens today, UTC); it resets at "
                             "midnight UTC", _seconds_to_midnight(utcnow()))
        if limits.max_active_jobs is not None and active >= limits.max_active_jobs:
            return OverQuota(f"quota of {limits.max_active_jobs} queued or running jobs "
                             "reached; submit again when some have finished",
                             ACTIVE_RETRY_AFTER_S)
        self._state[tenant_id] = (limits, active + 1, tokens)
        return None
