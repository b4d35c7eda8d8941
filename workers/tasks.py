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


@app.task(name=RUN_JOB, bind=True, max_retries=1)
def run_job(self, job_id: str) -> str:
    from workers.runner import run_job as run

    outcome = run(job_id)
    if outcome == "busy" and self.request.retries == 0:
        # Another delivery looks alive. If its worker just died (the message came back after a
        # crash), its heartbeat goes stale soon: look once more after that.
        raise self.retry(countdown=get_settings().worker.stale_after_s + 5)
    return outcome


@app.task(name=SWEEP_JOBS)
def sweep_jobs() -> dict[str, int]:
    return sweep()


def sweep() -> dict[str, int]:
    """Periodic repair (beat -> queue `cpu`): enqueue again the jobs whose message was lost.

    Two ways a job is stranded: the enqueue after the API's commit failed (broker down), or
    the worker running it vanished without the broker redelivering (no heartbeat any more)."""
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository

    worker = get_settings().worker
    with session_scope() as session:
        stale = JobRepository(session).requeue_stale_running(stale_after_s=worker.stale_after_s)
    for job_id in stale:
        enqueue_job(job_id)
    lost: list[str] = []
    # while messages still wait in the GPU queue, old queued jobs are probably among them
    if queue_depths((GPU_QUEUE,))[GPU_QUEUE] == 0:
        with session_scope() as session:
            lost = JobRepository(session).requeue_lost_queued(
                requeue_after_s=worker.requeue_after_s)
        for job_id in lost:
            enqueue_job(job_id)
    if stale or lost:
        logger.warning("sweeper re-queued %d stale running and %d lost queued job(s)",
                       len(stale), len(lost))
    return {"stale_running": len(stale), "lost_queued": len(lost)}
