"""Celery tasks. Imported by the worker parent: keep torch and the model out of module scope."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from service.settings import get_settings
from workers.celery_app import RUN_JOB, SWEEP_JOBS, app

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
    from workers.sweeper import sweep

    return sweep()
