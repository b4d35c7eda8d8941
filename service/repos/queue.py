"""Batch tasks by name, and sending them (cheap to import: the API and beat send, workers run).

Fan-out: the file tasks of a batch go out as one Celery `group` on queue `gpu`. The join is not
a chord: this deployment keeps no Celery result backend (results are rows in our database,
`result_backend=None`), and a chord needs one to count finished members (on backends without
native joins it polls with `chord_unlock`). The database is the counter instead: every file task
settles its file with a compare-and-set and bumps the batch's counters in SQL; the settle that
completes the count moves the batch to `aggregating` (another compare-and-set) and sends the
overview task. A redelivered or duplicated file task settles nothing twice, and the beat
reconciler (`namm.batch_tick`) settles files whose task was lost.
"""

from __future__ import annotations

import logging

from service.core.queue import CPU_QUEUE, GPU_QUEUE, celery_app

logger = logging.getLogger(__name__)

INGEST_BATCH = "namm.batch_ingest"
BATCH_FILE = "namm.batch_file"
BATCH_OVERVIEW = "namm.batch_overview"
BATCH_TICK = "namm.batch_tick"  # beat: due schedules -> batches; repair of lost messages
TICK_INTERVAL_S = 30.0


def _send(name: str, args: list, queue: str) -> bool:
    try:
        celery_app().send_task(name, args=args, queue=queue)
        return True
    except Exception as exc:  # broker down: the rows are committed; the tick repairs it
        logger.warning("could not send %s (%s); the batch tick will retry", name,
                       type(exc).__name__)
        return False


def enqueue_ingest(batch_id: str) -> bool:
    return _send(INGEST_BATCH, [batch_id], CPU_QUEUE)


def enqueue_overview(batch_id: str) -> bool:
    return _send(BATCH_OVERVIEW, [batch_id], GPU_QUEUE)


def enqueue_files(file_ids: list[int]) -> bool:
    """One group of file tasks on queue `gpu`."""
    if not file_ids:
        return True
    from celery import group

    app = celery_app()
    try:
        group(app.signature(BATCH_FILE, args=[file_id], queue=GPU_QUEUE)
              for file_id in file_ids).apply_async()
        return True
    except Exception as exc:
        logger.warning("could not send %d file task(s) (%s); the job sweeper and the batch "
                       "tick will pick them up", len(file_ids), type(exc).__name__)
        return False
