"""Celery tasks. Imported by the worker parent: keep torch and the model out of module scope."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from service.core.queue import GPU_QUEUE, RUN_JOB, SWEEP_JOBS, enqueue_job, queue_depths
from service.core.settings import get_settings
from workers.celery_app import app

logger = logging.getLogger(__name__)


@worker_process_init.connect
def _preload_model(**_kwargs) -> None:
    # runs in each forked child, never in the parent
    if get_settings().worker.preload_model:
        from workers.model import get_model

        get_model()


@worker_process_init.connect
def _die_with_parent(**_kwargs) -> None:
    # A child whose parent was SIGKILLed would run on as an orphan, its heartbeat keeping the
    # job "alive" forever if it hung. Linux kills it with its parent instead; the sweeper
    # then sees the heartbeat stop and queues the job again (docs/service.md, "Recovery").
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@app.task(name=RUN_JOB, bind=True, max_retries=1)
def run_job(self, job_id: str) -> str:
    from workers.runner import run_job as run

    outcome = run(job_id)
    if outcome == "busy" and self.request.retries == 0:
        # Another delivery looks alive. If its worker just died (the message came back after a
        # crash), its heartbeat goes stale soon: look once more after that.
        raise self.retry(countdown=get_settings().worker.stale_after_s + 5)
    from workers.batches import after_job
    from workers.releases import release_after

    after_job(job_id)  # a repository batch's file or overview: settle it (plain jobs: nothing)
    try:  # the job's slot in its tenant's quota is free: a waiting job may run now
        release_after(job_id)
    except Exception:  # the job's own outcome is stored; the next sweep releases instead
        logger.warning("releasing waiting jobs after job %s failed", job_id, exc_info=True)
    return outcome


@app.task(name=SWEEP_JOBS)
def sweep_jobs() -> dict[str, int]:
    from service.core.task_lock import PERIODIC_LOCK_TTL_S, run_alone

    # another sweep running: it does this work; this one returns at once instead of doubling it
    with run_alone("sweep", ttl_s=PERIODIC_LOCK_TTL_S) as alone:
        return sweep() if alone else {"skipped": 1}


def sweep() -> dict[str, int]:
    """Periodic repair (beat -> queue `cpu`), within a minute of a fault (service/jobs/recovery.py):
    - running jobs without a heartbeat (their worker is gone) are queued and enqueued again;
    - queued jobs with no message waiting in the broker (lost in a broker restart, a failed
      enqueue, or taken by a worker parent that was killed) are enqueued again;
    - jobs waiting for their tenant's quota are released where it has room (a release missed
      in a crash, the daily token quota's reset at midnight UTC);
    - Idempotency-Keys past their TTL are deleted."""
    from service.core.broker_scan import waiting_job_ids
    from service.core.db import session_scope
    from service.jobs import idempotency
    from service.jobs.recovery import lost_queued
    from service.jobs.repository import JobRepository
    from workers.releases import release_all

    settings = get_settings()
    worker = settings.worker
    with session_scope() as session:
        stale = JobRepository(session).requeue_stale_running(stale_after_s=worker.stale_after_s)
    for job_id in stale:
        enqueue_job(job_id)
    lost: list[str] = []
    waiting = waiting_job_ids(GPU_QUEUE)
    if waiting is not None:
        with session_scope() as session:
            lost = lost_queued(session, waiting, requeue_after_s=worker.requeue_after_s)
    elif queue_depths((GPU_QUEUE,))[GPU_QUEUE] == 0:
        # a broker we cannot read: while messages wait, old queued jobs are probably among them
        with session_scope() as session:
            lost = JobRepository(session).requeue_lost_queued(
                requeue_after_s=worker.requeue_after_s)
    for job_id in lost:
        enqueue_job(job_id)
    memories = settle_memories(settings)
    released = release_all()
    with session_scope() as session:
        purged = idempotency.purge_expired(session, settings.api.idempotency_ttl_s)
    if stale or lost:
        logger.warning("sweeper re-queued %d stale running and %d lost queued job(s)",
                       len(stale), len(lost))
    return {"stale_running": len(stale), "lost_queued": len(lost), "released": released,
            "keys_purged": purged, **memories}


def settle_memories(settings) -> dict[str, int]:
    """Stored documents (service/memories): reads that ended without a memory are failed (their
    questions then fail instead of waiting); documents past their expiry are deleted (text and
    file); beyond `memories.max_total_bytes`, the least recently used files are dropped (their
    next question rebuilds the memory from the text)."""
    from service.core.db import session_scope
    from service.memories.repository import MemoryRepository
    from service.memories.store import memory_store
    from service.models import utcnow

    with session_scope() as session:
        repo = MemoryRepository(session)
        failed = repo.settle_reads()
        expired = repo.expire(utcnow())
        evicted = repo.evict_over(settings.memories.max_total_bytes) \
            if settings.memories.max_total_bytes is not None else []
    store = memory_store()
    for key in expired + evicted:  # after the commit: a row never names a deleted file
        store.delete(key)
    return {"reads_failed": failed, "documents_expired": len(expired), "memories_evicted": len(evicted)}
