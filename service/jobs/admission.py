"""Jobs over their tenant's quota wait instead of being refused (issue 23, item 3).

A plain submission over a quota is refused with 429 (service/api/intake.py). A repository
batch is admitted while its tenant is under quota (service/api/routes/batches.py), but it then
makes many jobs at once (one per file, later the overview and the questions): those fill the
tenant's free active-job slots as `queued`, and the rest are made `waiting`. A waiting job
does not count as active and has no message in the broker. It is released (made queued, sent
after the commit) when the tenant has room again: after each of the tenant's jobs ends (the
`namm.run_job` task) and on every sweep, which also catches a release missed in a crash and
the daily token quota's reset at midnight UTC. While the tenant is at its daily token quota,
nothing is released. A tenant without quotas never has a waiting job.

Counting and releasing run under the tenant's quota lock (service/jobs/quotas.py
`lock_active_jobs`), like plain submissions, so concurrent releases and submissions never
take the tenant past `max_active_jobs`.
"""

from __future__ import annotations

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from service.jobs.quotas import active_jobs, limits_for, lock_active_jobs, tokens_today
from service.jobs.repository import JobRepository
from service.models import BatchFile, Job, JobStatus, MemoryStatus, StoredDocument

WAITING = JobStatus.waiting.value
# a question on a stored document still being read waits for the read, whatever the quota
# says (service/memories); the release after the read job sends it, like a quota release
# (memory_id NULL must count as read: NOT (NULL IN ...) is NULL in SQL, not true)
NOT_READ_YET = and_(Job.memory_id.is_not(None), Job.memory_id.in_(
    select(StoredDocument.id).where(StoredDocument.status == MemoryStatus.reading.value)))
RELEASE_AT_MOST = 500  # per tenant and call: the next call releases the rest


def room(session: Session, tenant_id: int, defaults) -> int | None:
    """How many more of the tenant's jobs may be queued now (0 while its daily token quota is
    reached), with its quota lock held to the end of the transaction; None: no limit."""
    limits = limits_for(session, tenant_id, defaults)
    if (limits.max_tokens_per_day is not None
            and tokens_today(session, tenant_id) >= limits.max_tokens_per_day):
        return 0
    if limits.max_active_jobs is None:
        return None
    lock_active_jobs(session, tenant_id)
    return max(0, limits.max_active_jobs - active_jobs(session, tenant_id))


def queued_share(session: Session, tenant_id: int, wanted: int, defaults) -> int | None:
    """How many of `wanted` new jobs are made queued (the rest wait); None: all of them.
    The tenant's jobs already waiting come first (a slot is free only between a job's end and
    the release that follows). Call it in the transaction that makes the jobs."""
    free = room(session, tenant_id, defaults)
    if free is None:
        return None
    waiting = session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status == WAITING, ~NOT_READ_YET)) or 0
    return max(0, min(wanted, free - waiting))


def release(session: Session, tenant_id: int, defaults) -> list[str]:
    """The tenant's waiting jobs that fit now, oldest first (a batch's files in reading
    order), made queued; the ids to send once the transaction has committed."""
    if session.scalar(select(Job.id).where(Job.tenant_id == tenant_id, Job.status == WAITING)
                      .limit(1)) is None:
        return []  # the common case, decided without the quota lock
    free = room(session, tenant_id, defaults)
    if free == 0:
        return []
    picked = list(session.scalars(
        select(Job.id).outerjoin(BatchFile, BatchFile.job_id == Job.id)
        .where(Job.tenant_id == tenant_id, Job.status == WAITING, ~NOT_READ_YET)
        .order_by(Job.created_at, BatchFile.position, Job.id)
        .limit(min(free if free is not None else RELEASE_AT_MOST, RELEASE_AT_MOST))))
    return JobRepository(session).release(picked)


def tenants_waiting(session: Session) -> list[int]:
    """The tenants that have waiting jobs (the sweep tries to release them)."""
    return list(session.scalars(
        select(Job.tenant_id).where(Job.status == WAITING).distinct().order_by(Job.tenant_id)))


def waiting_reason(session: Session, tenant_id: int, defaults) -> str:
    """Why the tenant's waiting jobs wait, in words for the client."""
    limits = limits_for(session, tenant_id, defaults)
    if (limits.max_tokens_per_day is not None
            and tokens_today(session, tenant_id) >= limits.max_tokens_per_day):
        return ("waiting for the tenant's daily token quota "
                f"({limits.max_tokens_per_day} tokens a day); it resets at midnight UTC")
    if limits.max_active_jobs is not None:
        return ("waiting for the tenant's active-jobs quota "
                f"({limits.max_active_jobs} queued or running at once)")
    return "waiting to be released (the next sweep sends it)"
