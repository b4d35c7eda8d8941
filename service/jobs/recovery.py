"""Finding jobs whose message is lost (issue 13: recovery within a minute).

A job is stranded in two ways, both repaired by the sweeper (workers/tasks.py, every
`worker.sweep_interval_s`):
- running without a heartbeat for `worker.stale_after_s`: its worker died (SIGKILL of the
  child or its parent, out of memory, the machine): JobRepository.requeue_stale_running puts
  it back to queued and it is enqueued again;
- queued for `worker.requeue_after_s` with no message waiting for it in the broker
  (service/core/broker_scan.py): `lost_queued` below picks it and it is enqueued again.
Duplicated messages are harmless: JobRepository.claim runs a job once, a finished job's
message is a no-op, and results are unique per job.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import Job, JobStatus, utcnow

QUEUED = JobStatus.queued.value


def lost_queued(session: Session, waiting: Collection[str], *, requeue_after_s: float,
                limit: int = 500) -> list[str]:
    """Queued jobs enqueued longer ago than `requeue_after_s` whose id is not in `waiting`
    (the job ids with a message in the broker); their enqueue time is reset. The ids to
    enqueue again, oldest first."""
    cutoff = utcnow() - timedelta(seconds=requeue_after_s)
    lost: list[str] = []
    last = None
    while len(lost) < limit:  # page past the jobs that do wait in the broker
        query = (select(Job.id, Job.enqueued_at)
                 .where(Job.status == QUEUED, Job.enqueued_at < cutoff)
                 .order_by(Job.enqueued_at, Job.id).limit(1000))
        if last is not None:
            query = query.where((Job.enqueued_at > last[1])
                                | ((Job.enqueued_at == last[1]) & (Job.id > last[0])))
        rows = session.execute(query).all()
        if not rows:
            break
        lost += [job_id for job_id, _ in rows if job_id not in waiting][: limit - len(lost)]
        last = rows[-1]
    if lost:
        session.execute(update(Job).where(Job.id.in_(lost), Job.status == QUEUED)
                        .values(enqueued_at=utcnow()))
    return lost
