"""Batch tasks by name, and sending them (cheap to import: the API and beat send, workers run).

Fan-out: the files of a batch are ordinary jobs (`jobs.batch_id`), sent as one Celery `group`
of `namm.run_job` messages on queue `gpu`. After each job, the worker's `run_job` task settles
the job's file (workers/batches.py `after_job`). Being plain job messages, they are covered by
the job sweeper's recovery like any job (a lost message is resent, a killed worker's job is
requeued), and a redelivered message is a no-op at claim time.

The join is not a chord: this deployment keeps no Celery result backend (results are rows in
our database, `result_backend=None`), and a chord needs one to count finished members (on
backends without native joins it polls with `chord_unlock`). The database is the counter
instead: every settle is a compare-and-set on the file and bumps the batch's counters in SQL;
the settle that completes the count moves the batch to `aggregating` (another compare-and-set,
won exactly once) and sends the overview's job. The beat tick (`namm.batch_tick`) settles what a
lost acknowledgement or a crash between a job's end and its settling left behind.
"""

from __future__ import annotations

import logging

from service.core.queue import BATCH_TICK, CPU_QUEUE, GPU_QUEUE, RUN_JOB, celery_app

logger = logging.getLogger(__name__)

INGEST_BATCH = "namm.batch_ingest"
__all__ = ["BATCH_TICK", "INGEST_BATCH", "enqueue_ingest", "enqueue_jobs_group"]


def enqueue_ingest(batch_id: str, expires_s: float | None = None) -> bool:
    """`expires_s` for the tick's re-sends: one left waiting that long is dropped by the worker
    (the next tick sends another while the batch is still queued), so re-sends cannot pile up."""
    try:
        celery_app().send_task(INGEST_BATCH, args=[batch_id], queue=CPU_QUEUE,
                               expires=expires_s)
        return True
    except Exception as exc:  # broker down: the row is committed; the tick resends it
        logger.warning("could not send the ingestion of batch %s (%s); the batch tick will "
                       "retry", batch_id, type(exc).__name__)
        return False


def enqueue_jobs_group(job_ids: list[str]) -> bool:
    """The jobs of a batch as one Celery group of `namm.run_job` messages on queue `gpu`."""
    if not job_ids:
        return True
    from celery import group

    app = celery_app()
    try:
        group(app.signature(RUN_JOB, args=[job_id], queue=GPU_QUEUE)
              for job_id in job_ids).apply_async()
        return True
    except Exception as exc:  # the rows are committed: the job sweeper resends queued jobs
        logger.warning("could not send %d batch job(s) (%s); the sweeper will resend them",
                       len(job_ids), type(exc).__name__)
        return False
