"""Per-tenant quotas (issue 13): jobs queued or running at once, and tokens per UTC day.

Defaults for every tenant come from settings (`NAMM_QUOTAS__MAX_ACTIVE_JOBS`,
`NAMM_QUOTAS__MAX_TOKENS_PER_DAY`; unset: unlimited); a row in `tenant_quotas` (migration
0005, set by an admin key: PUT /v1/admin/tenants/{id}/quotas) overrides them for one tenant.
A submission over a quota is answered 429 with Retry-After: the active-jobs quota frees up as
jobs finish, the daily tokens at the next UTC midnight.

Checked when a batch of submissions is stored (service/api/intake.py), counting the batch's
own new jobs, in the transaction that stores them and under the tenant's quota lock
(`lock_active_jobs`), which a repository batch's fan-out and the release of waiting jobs
(service/jobs/admission.py) take too: nobody sees a free slot another is filling.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service.models import Job, JobStatus, Tenant, TenantQuota, UsageRecord, utcnow


ACTIVE = (JobStatus.queued.value, JobStatus.running.value)
ACTIVE_RETRY_AFTER_S = 30
QUOTA_LOCK_CLASS = 23_003  # first key of the tenant's advisory lock (issue 23, item 3)


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


def lock_active_jobs(session: Session, tenant_id: int) -> None:
    """Hold the tenant's active-jobs count still until the transaction ends. Whoever counts
    the tenant's queued and running jobs in order to add some (a submission, a batch's
    fan-out, a release of waiting jobs) takes this first. PostgreSQL: a transaction-level
    advisory lock. SQLite: a write that changes nothing, which takes the database's one write
    lock; without it the count would run outside any transaction (pysqlite begins one at the
    first write only) and two writers could both see the same free slot."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:cls, :tenant)"),
                        {"cls": QUOTA_LOCK_CLASS, "tenant": tenant_id})
    else:
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name))


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
    """Admits new jobs tenant by tenant, counting the ones admitted so far. `lock`: take each
    tenant's quota lock before counting (the session must be the one that stores the jobs)."""

    def __init__(self, session_factory, defaults, *, lock: bool = False):
        self._session_factory = session_factory
        self._defaults = defaults
        self._lock = lock
        self._state: dict[int, tuple[Limits, int, int]] = {}  # limits, active, tokens today

    def _load(self, tenant_id: int) -> tuple[Limits, int, int]:
        if tenant_id not in self._state:
            with self._session_factory() as session:
                limits = limits_for(session, tenant_id, self._defaults)
                if self._lock and limits.max_active_jobs is not None:
                    lock_active_jobs(session, tenant_id)
                active = (active_jobs(session, tenant_id)
                          if limits.max_active_jobs is not None else 0)
                tokens = (tokens_today(session, tenant_id)
                          if limits.max_tokens_per_day is not None else 0)
            self._state[tenant_id] = (limits, active, tokens)
        return self._state[tenant_id]

    def load(self, tenant_ids) -> None:
        """Look at these tenants now, in id order (so locks are always taken in one order)."""
        for tenant_id in sorted(set(tenant_ids)):
            self._load(tenant_id)

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
