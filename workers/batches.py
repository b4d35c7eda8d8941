"""Batch tasks: ingestion (queue `cpu`), the hook after each job of a batch (queue `gpu`), and
the beat tick that starts scheduled batches and repairs lost messages (queue `cpu`).

Each file and the overview run as ordinary jobs through the `namm.run_job` task (claim, attempt
cap, heartbeat, idempotent completion, usage record, the sweeper's recovery); that task calls
`after_job`, and what is batch-specific is settled in service.repos.repository.BatchRepository.
See service/repos/queue.py for why the join is a compare-and-set in the database rather than a
chord.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from service.core.db import session_scope
from service.core.queue import BATCH_TICK_INTERVAL_S
from service.core.settings import get_settings
from service.repos.queue import BATCH_TICK, INGEST_BATCH, enqueue_ingest, enqueue_jobs_group
from service.models import Batch
from service.repos.repository import BatchRepository, Settlement
from service.repos.sources import Unpacked
from workers.celery_app import app

logger = logging.getLogger(__name__)


# ---- ingestion -------------------------------------------------------------------------------
def materialize(source: dict, upload: bytes | None, workdir: Path) -> Unpacked:
    """The repository's files on disk, below `workdir`, and what was left out on the way
    (an archive's links and special files); SourceError when refused."""
    from service.repos.git_source import GitAccess, clone_git
    from service.repos.sources import Limits, SourceError, extract_archive, resolve_server_path

    settings = get_settings().batches
    kind = source.get("kind")
    if kind == "archive":
        if upload is None:
            raise SourceError("the uploaded archive is gone (already ingested?)")
        return extract_archive(upload, source.get("filename") or "upload", workdir / "src",
                               Limits.of(settings))
    if kind == "path":
        return Unpacked(resolve_server_path(source.get("path", ""), settings.allowed_roots), [])
    if kind == "git":
        return Unpacked(clone_git(source.get("url", ""), workdir / "src",
                                  access=GitAccess.of(settings), ref=source.get("ref")), [])
    raise SourceError(f"unknown source kind {kind!r}")


def run_ingest(batch_id: str) -> str:
    from service.repos.ingest import IngestLimits, ingest
    from service.repos.sources import SourceError

    from workers.runner import Heartbeat

    worker = get_settings().worker
    with session_scope() as session:
        claim = BatchRepository(session).ingest_claim(batch_id, stale_after_s=worker.stale_after_s)
    if claim is None:
        logger.info("batch %s not ingested: not queued, or another worker is reading it", batch_id)
        return "skipped"
    settings = get_settings().batches
    workdir = Path(tempfile.mkdtemp(prefix=f"namm-batch-{batch_id[:8]}-"))
    try:
        with Heartbeat(batch_id, worker.heartbeat_interval_s, touch=ingest_heartbeat):
            unpacked = materialize(claim.source, claim.upload, workdir)
            ingestion = ingest(unpacked.root, IngestLimits(
                settings.max_file_bytes, settings.max_total_bytes, settings.max_files))
            ingestion.skipped[:0] = unpacked.left_out
    except SourceError as exc:
        logger.info("batch %s: source refused: %s", batch_id, exc)
        with session_scope() as session:
            BatchRepository(session).fail(batch_id, f"source refused: {exc}")
        return "failed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with session_scope() as session:
        job_ids = BatchRepository(session).record_ingestion(batch_id, ingestion)
    logger.info("batch %s ingested: %d file(s), %d skipped", batch_id, len(job_ids),
                len(ingestion.skipped))
    enqueue_jobs_group(job_ids)  # one group on queue gpu, in reading order
    return "ingested"


def ingest_heartbeat(batch_id: str) -> bool:
    with session_scope() as session:
        return BatchRepository(session).ingest_heartbeat(batch_id)


# ---- files and overview (after each job of a batch) ------------------------------------------
def after_settle(settlement: Settlement) -> None:
    """Send what the settle asked for: a file's next attempt, or the aggregation's jobs."""
    if settlement.retry_job_id:
        enqueue_jobs_group([settlement.retry_job_id])
    if settlement.next_action == "overview" and settlement.batch_id:
        start_aggregation(settlement.batch_id)


def start_aggregation(batch_id: str) -> None:
    """Make the overview's and the questions' jobs if missing, send the ones made now (a job
    made waiting, over the tenant's quota, is sent by its release)."""
    from service.jobs.repository import JobRepository

    settings = get_settings().batches
    with session_scope() as session:
        repo = BatchRepository(session)
        batch = session.get(Batch, batch_id)
        existing = batch.overview_job_id if batch else None
        overview = repo.overview_job(batch_id, max_chars=settings.overview_max_chars)
        # task memory first: the questions are then asked of it (they wait for its read)
        memory, memory_made = repo.memory_job(
            batch_id, max_chars=settings.questions_max_chars, n_up=get_settings().model.n_up,
            ttl=timedelta(days=get_settings().memories.ttl_days))
        questions, made = repo.questions_job(batch_id, max_chars=settings.questions_max_chars)
        new = [job for job, fresh in ((overview, overview is not None and overview != existing),
                                      (memory, memory_made), (questions, made)) if fresh]
        to_send = JobRepository(session).queued_among(new)
    enqueue_jobs_group(to_send)
    if not new:  # nothing new to wait for: finish now if the jobs already ended (a no-op if not)
        with session_scope() as session:
            BatchRepository(session).finish(batch_id)


def after_job(job_id: str) -> str | None:
    """Called by the `namm.run_job` task after every job: settle the batch file the job
    summarises, or finish the batch whose overview or questions it wrote. None for a plain
    job."""
    with session_scope() as session:
        repo = BatchRepository(session)
        target = repo.job_target(job_id)
        if target is None:
            return None
        kind, ident = target
        if kind == "aggregate":
            finished = repo.finish(ident)
            logger.info("batch %s aggregation job %s: batch finished %s", ident, job_id,
                        finished)
            return "finished" if finished else "waiting"
    settlement = settle(int(ident))
    after_settle(settlement)
    logger.info("batch file %s (job %s): %s", ident, job_id, settlement.step.value)
    return settlement.step.value


def settle(file_id: int) -> Settlement:
    with session_scope() as session:
        return BatchRepository(session).settle_file(
            file_id, file_attempts=get_settings().batches.file_attempts)


# ---- beat ------------------------------------------------------------------------------------
def tick(now: datetime | None = None) -> dict[str, int]:
    """Due schedules become batches; what lost messages left behind is repaired: files whose
    job finished but which were never settled, queued batches never ingested, aggregating
    batches without an overview job or whose overview finished unnoticed. A queued batch whose
    source a worker is still reading (its ingestion heartbeat is fresh) is left alone: a long
    clone is not cloned again by every tick."""
    from service.repos.schedules import start_due_schedules

    started = start_due_schedules(now)
    for batch_id in started:
        enqueue_ingest(batch_id)
    with session_scope() as session:
        repo = BatchRepository(session)
        unsettled = repo.unsettled_files()
        worker = get_settings().worker
        queued, aggregating = repo.stalled(older_than_s=worker.requeue_after_s,
                                           stale_after_s=worker.stale_after_s)
    for file_id in unsettled:
        after_settle(settle(file_id))
    for batch_id in queued:
        enqueue_ingest(batch_id, expires_s=BATCH_TICK_INTERVAL_S)
    for batch_id in aggregating:
        with session_scope() as session:
            finished = BatchRepository(session).finish(batch_id)
        if not finished:
            start_aggregation(batch_id)  # missing jobs made and sent; waiting ones: the sweeper's
    return {"scheduled": len(started), "settled": len(unsettled), "ingest_resent": len(queued),
            "aggregating_checked": len(aggregating)}


@app.task(name=INGEST_BATCH)
def batch_ingest(batch_id: str) -> str:
    return run_ingest(batch_id)


@app.task(name=BATCH_TICK)
def batch_tick() -> dict[str, int]:
    from service.core.task_lock import PERIODIC_LOCK_TTL_S, run_alone

    # another tick running: it does this work; this one returns at once instead of doubling it
    with run_alone("batch-tick", ttl_s=PERIODIC_LOCK_TTL_S) as alone:
        return tick() if alone else {"skipped": 1}
