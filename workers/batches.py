"""Batch tasks: ingestion (queue `cpu`), one task per file and the overview (queue `gpu`), and
the beat tick that starts scheduled batches and repairs lost messages (queue `cpu`).

Each file and the overview run as ordinary jobs through workers.runner.run_job (claim, attempt
cap, heartbeat, idempotent completion, usage record); what is batch-specific is settled in
service.repos.repository.BatchRepository. See service/repos/queue.py for why the join is a
compare-and-set in the database rather than a chord.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from service.core.db import session_scope
from service.core.settings import get_settings
from service.repos.queue import (
    BATCH_FILE,
    BATCH_OVERVIEW,
    BATCH_TICK,
    INGEST_BATCH,
    enqueue_files,
    enqueue_ingest,
    enqueue_overview,
)
from service.repos.repository import BatchRepository, FileStep, Settlement
from workers.celery_app import app

logger = logging.getLogger(__name__)


# ---- ingestion -------------------------------------------------------------------------------
def materialize(source: dict, upload: bytes | None, workdir: Path) -> Path:
    """The repository's files on disk, below `workdir`; SourceError when refused."""
    from service.repos.sources import Limits, SourceError, clone_git, extract_archive, \
        resolve_server_path

    settings = get_settings().batches
    kind = source.get("kind")
    if kind == "archive":
        if upload is None:
            raise SourceError("the uploaded archive is gone (already ingested?)")
        return extract_archive(upload, source.get("filename") or "upload", workdir / "src",
                               Limits.of(settings))
    if kind == "path":
        return resolve_server_path(source.get("path", ""), settings.allowed_roots)
    if kind == "git":
        return clone_git(source.get("url", ""), workdir / "src",
                         allowed_roots=settings.allowed_roots, ref=source.get("ref"),
                         timeout_s=settings.git_timeout_s)
    raise SourceError(f"unknown source kind {kind!r}")


def run_ingest(batch_id: str) -> str:
    from service.repos.ingest import IngestLimits, ingest
    from service.repos.sources import SourceError

    with session_scope() as session:
        claim = BatchRepository(session).ingest_claim(batch_id)
    if claim is None:
        logger.info("batch %s not ingested: not queued", batch_id)
        return "skipped"
    settings = get_settings().batches
    workdir = Path(tempfile.mkdtemp(prefix=f"namm-batch-{batch_id[:8]}-"))
    try:
        root = materialize(claim.source, claim.upload, workdir)
        ingestion = ingest(root, IngestLimits(settings.max_file_bytes, settings.max_total_bytes,
                                              settings.max_files))
    except SourceError as exc:
        logger.info("batch %s: source refused: %s", batch_id, exc)
        with session_scope() as session:
            BatchRepository(session).fail(batch_id, f"source refused: {exc}")
        return "failed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with session_scope() as session:
        file_ids = BatchRepository(session).record_ingestion(batch_id, ingestion)
    logger.info("batch %s ingested: %d file(s), %d skipped", batch_id, len(file_ids),
                len(ingestion.skipped))
    enqueue_files(file_ids)
    return "ingested"


# ---- files and overview ----------------------------------------------------------------------
def after_settle(settlement: Settlement, file_id: int | None = None) -> None:
    if settlement.step is FileStep.retry and file_id is not None:
        enqueue_files([file_id])
    if settlement.next_action == "overview" and settlement.batch_id:
        enqueue_overview(settlement.batch_id)


def settle(file_id: int) -> Settlement:
    with session_scope() as session:
        return BatchRepository(session).settle_file(
            file_id, file_attempts=get_settings().batches.file_attempts)


def run_file(file_id: int) -> str:
    """Run the file's job (a no-op when it already ran), then settle the file."""
    from workers.runner import run_job

    with session_scope() as session:
        job_id = BatchRepository(session).file_job(file_id)
    if job_id is None:
        logger.info("batch file %s not run: finished or its batch is not running", file_id)
        return "finished"
    outcome = run_job(job_id)
    if outcome == "busy":
        return outcome
    settlement = settle(file_id)
    after_settle(settlement, file_id)
    logger.info("batch file %s: job %s %s, file %s", file_id, job_id, outcome,
                settlement.step.value)
    return settlement.step.value


def run_overview(batch_id: str) -> str:
    from workers.runner import run_job

    with session_scope() as session:
        job_id = BatchRepository(session).overview_job(
            batch_id, max_chars=get_settings().batches.overview_max_chars)
    if job_id is None:
        return "skipped"
    outcome = run_job(job_id)
    if outcome == "busy":
        return outcome
    with session_scope() as session:
        finished = BatchRepository(session).finish(batch_id)
    logger.info("batch %s overview: job %s %s; batch finished: %s", batch_id, job_id, outcome,
                finished)
    return "done" if finished else outcome


# ---- beat ------------------------------------------------------------------------------------
def tick(now: datetime | None = None) -> dict[str, int]:
    """Due schedules become batches; lost messages are sent again (see the repository)."""
    from service.repos.schedules import start_due_schedules

    started = start_due_schedules(now)
    for batch_id in started:
        enqueue_ingest(batch_id)
    with session_scope() as session:
        repo = BatchRepository(session)
        unsettled = repo.unsettled_files()
        queued, aggregating = repo.stalled(older_than_s=get_settings().worker.requeue_after_s)
    for file_id in unsettled:
        after_settle(settle(file_id))
    for batch_id in queued:
        enqueue_ingest(batch_id)
    for batch_id in aggregating:
        enqueue_overview(batch_id)
    return {"scheduled": len(started), "settled": len(unsettled), "ingest_resent": len(queued),
            "overview_resent": len(aggregating)}


@app.task(name=INGEST_BATCH)
def batch_ingest(batch_id: str) -> str:
    return run_ingest(batch_id)


@app.task(name=BATCH_FILE, bind=True, max_retries=1)
def batch_file(self, file_id: int) -> str:
    outcome = run_file(file_id)
    if outcome == "busy" and self.request.retries == 0:
        # another delivery runs the job, or its worker just died: look again once the
        # heartbeat would be stale (as workers.tasks.run_job does)
        raise self.retry(countdown=get_settings().worker.stale_after_s + 5)
    return outcome


@app.task(name=BATCH_OVERVIEW, bind=True, max_retries=1)
def batch_overview(self, batch_id: str) -> str:
    outcome = run_overview(batch_id)
    if outcome == "busy" and self.request.retries == 0:
        raise self.retry(countdown=get_settings().worker.stale_after_s + 5)
    return outcome


@app.task(name=BATCH_TICK)
def batch_tick() -> dict[str, int]:
    return tick()
