"""Periodic repair (Celery beat -> queue `cpu`): re-queue jobs whose message was lost.

Two ways a job can be stranded: the enqueue after the API's commit failed (broker down), or
the worker holding it vanished without the broker redelivering (no heartbeat any more).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from service.db import session_scope
from service.enqueue import enqueue_job, queue_depths
from service.models import Job, JobStatus, utcnow
from service.settings import get_settings

logger = logging.getLogger(__name__)


def requeue_stale_running() -> list[str]:
    """Running jobs without a heartbeat: back to queued (the attempt cap still applies)."""
    cutoff = utcnow() - timedelta(seconds=get_settings().worker.stale_after_s)
    with session_scope() as session:
        ids = list(session.scalars(
            select(Job.id).where(Job.status == JobStatus.running.value, Job.heartbeat_at < cutoff)
        ))
        if ids:
            session.execute(
                update(Job).where(Job.id.in_(ids), Job.status == JobStatus.running.value)
                .values(status=JobStatus.queued.value, enqueued_at=utcnow())
            )
    for job_id in ids:
        enqueue_job(job_id)
    return ids


def requeue_lost_queued() -> list[str]:
    """Queued jobs nobody picked up while the GPU queue is empty: their message was lost."""
    if queue_depths(("gpu",)).get("gpu", 0) > 0:
        return []  # messages are still waiting: these jobs are probably among them
    cutoff = utcnow() - timedelta(seconds=get_settings().worker.requeue_after_s)
    with session_scope() as session:
        ids = list(session.scalars(
            select(Job.id).where(Job.status == JobStatus.queued.value, Job.enqueued_at < cutoff)
            .limit(500)
        ))
        if ids:
            session.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=utcnow()))
    for job_id in ids:
        enqueue_job(job_id)
    return ids


def sweep() -> dict[str, int]:
    stale = requeue_stale_running()
    lost = requeue_lost_queued()
    if stale or lost:
        logger.warning("sweeper re-queued %d stale running and %d lost queued job(s)",
                       len(stale), len(lost))
    return {"stale_running": len(stale), "lost_queued": len(lost)}
