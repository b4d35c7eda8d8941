"""Run one job: claim it, generate with the memory policy, store result and usage.

Every status change goes through service.jobs.repository.JobRepository, one short transaction
per step. How a failure is reported depends on its class only: a namm InputError is the
client's input (its message is theirs to read); anything else is the service's failure,
recorded as an internal error with no details beyond the exception type.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError

from namm.errors import InputError
from namm.spec import NON_EVICTING_POLICIES, GenerationRequest
from service.core.db import session_scope
from service.core.settings import ModelSettings, get_settings
from service.jobs.repository import ClaimedJob, ClaimOutcome, JobRepository
from workers.memories import StoreFailed

logger = logging.getLogger(__name__)


class JobStopped(Exception):
    """Raised from the progress callback to abort generation (the job was cancelled)."""


def reads_question_first(questions, model: ModelSettings) -> bool:
    """Whether a job with these questions reads its document with each question in view
    (`model.query_aware_max_questions`, see service/core/settings.py)."""
    return 0 < len(questions) <= model.query_aware_max_questions


def generation_request(job: ClaimedJob, model: ModelSettings) -> GenerationRequest:
    """What namm.generate is asked for each kind of job (validated by namm.spec), with the
    deployment's update interval and query-aware reading (`reads_question_first`)."""
    if job.kind == "answer":
        questions, instruction = job.questions, job.instruction
    elif job.kind == "summarize":  # the instruction, else namm.spec.SUMMARIZE_INSTRUCTION
        questions, instruction = [], job.instruction
    else:  # extract: a custom instruction, optionally with questions
        questions, instruction = job.questions, job.instruction
    return GenerationRequest(
        context=job.text, questions=tuple(questions), instruction=instruction, policy=job.policy,
        budget=None if job.policy in NON_EVICTING_POLICIES else job.budget,
        max_new_tokens=job.max_new_tokens, n_up=model.n_up, truncate=job.truncate,
        query_aware=reads_question_first(questions, model),
    )


def retention_of(memory, text: str, question: str | None = None) -> list | None:
    """[[text, share], ...] per document token; None where the memory did not read this text
    as is (a document cut to the model's context). `question`: the question it was read with."""
    from namm.retention import document_retention

    try:
        return document_retention(memory, text, question=question).to_json()
    except ValueError as exc:
        logger.info("no retention map: %s", exc)
        return None


def device_name(lm) -> str:
    """'cpu', or 'cuda:<GPU name>' (the usage record's device; its kind picks price and rate)."""
    device = str(getattr(lm, "device", "") or "unknown")
    if device.startswith("cuda"):
        import torch

        return f"cuda:{torch.cuda.get_device_name(lm.device)}"
    return device


def heartbeat(job_id: str, progress: float | None = None) -> bool:
    with session_scope() as session:
        return JobRepository(session).heartbeat(job_id, progress)


def fail(job_id: str, message: str) -> None:
    with session_scope() as session:
        JobRepository(session).fail(job_id, message)
        # a stored document whose read failed: its questions fail instead of waiting
        from service.memories.repository import MemoryRepository

        MemoryRepository(session).settle_reads()


class ProgressReporter:
    """progress(done_tokens, total_tokens) for namm.generate: writes at most every interval."""

    def __init__(self, job_id: str, interval_s: float):
        self.job_id = job_id
        self.interval_s = interval_s
        self._last = 0.0

    def __call__(self, done_tokens: int, total_tokens: int) -> None:
        now = time.monotonic()
        final = total_tokens > 0 and done_tokens >= total_tokens
        if not final and now - self._last < self.interval_s:
            return
        self._last = now
        fraction = done_tokens / total_tokens if total_tokens > 0 else 0.0
        if not heartbeat(self.job_id, fraction):
            raise JobStopped(self.job_id)


class Heartbeat:
    """Touches a row while work runs, so the sweeper (or the beat tick) can tell live work from
    lost work: a job's row (the progress callback is silent while the answer is being decoded),
    or a batch's while its source is cloned and read. `touch` defaults to the job heartbeat."""

    def __init__(self, ident: str, interval_s: float, touch: Callable[[str], object] | None = None):
        self.ident = ident
        self.interval_s = interval_s
        self._touch = touch or heartbeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{ident}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._touch(self.ident)
            except Exception:  # a missed beat is harmless; the next one may work
                logger.warning("heartbeat for %s failed", self.ident, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_job(job_id: str, *, load_model: Callable | None = None,
            generate: Callable | None = None, generate_batch: Callable | None = None) -> str:
    """Returns what happened, for logs and tests: done | failed | cancelled | <claim outcome>.
    With `worker.batch_max_jobs` > 1, queued jobs that fit run in one batch with this one
    (workers/batching.py); the outcome returned is this job's."""
    settings = get_settings()
    with session_scope() as session:
        outcome, job = JobRepository(session).claim(
            job_id, stale_after_s=settings.worker.stale_after_s)
    if outcome is not ClaimOutcome.claimed:
        logger.info("job %s not run: %s", job_id, outcome.value)
        return outcome.value
    assert job is not None
    from celery.exceptions import SoftTimeLimitExceeded

    output, error, read_done, lm = None, None, None, None
    try:
        with Heartbeat(job.id, settings.worker.heartbeat_interval_s):
            if load_model is None or generate is None:
                from namm import generate
                from workers.model import get_model as load_model

                if settings.worker.batch_max_jobs > 1:
                    from namm.batch import generate_batch
            lm = load_model()
            if generate_batch is not None:
                from workers.batching import claim_companions, run_batch

                companions = claim_companions(job, lm, len(job.text))
                if companions:
                    return _run_together([job, *companions], lm, generate_batch, run_batch)
            progress = ProgressReporter(job.id, settings.worker.progress_interval_s)
            if job.kind == "read":  # a stored document (service/memories): read and keep
                from workers.memories import run_read

                output, read_done = run_read(lm, job, progress)
            elif job.memory_id is not None:  # a question on a stored document
                from workers.memories import run_question

                output = run_question(lm, job)
            else:
                request = generation_request(job, settings.model)
                if job.retention:  # the map of the memory as reading left it (namm.retention)
                    maps: list = []
                    lead = request.questions[0] if request.query_aware else None
                    output = generate(lm, request, progress=progress, on_read=lambda memory: maps.append(
                        retention_of(memory, job.text, question=lead))).to_dict()
                    output["retention"] = maps[0] if maps else None
                else:
                    output = generate(lm, request, progress=progress).to_dict()
            output["device"] = device_name(lm)  # the price and the rate depend on it
    except JobStopped:
        logger.info("job %s stopped: no longer running (cancelled)", job.id)
        return "cancelled"
    except (SoftTimeLimitExceeded, Exception) as exc:
        error = exc
    return finish(job, getattr(lm, "name", None), output, error, read_done)


def _run_together(jobs: list[ClaimedJob], lm, generate_batch: Callable, run_batch: Callable) -> str:
    """The batch of `jobs` (the task's own first); the others' batch and quota follow-ups run
    here, as the task runs them for its own job."""
    from workers.batches import after_job
    from workers.releases import release_after

    outcomes = run_batch(jobs, lm, generate_batch,
                         lambda job, output, error: finish(job, getattr(lm, "name", None), output, error))
    for job in jobs[1:]:
        try:
            after_job(job.id)
            release_after(job.id)
        except Exception:  # its outcome is stored; the sweep and the beat tick settle the rest
            logger.warning("follow-up of batched job %s failed", job.id, exc_info=True)
    return outcomes[jobs[0].id]


def finish(job: ClaimedJob, model_name: str | None, output: dict | None, error: BaseException | None,
           read_done=None) -> str:
    """Store how `job` ended: its result and usage record, or its failure. How a failure is
    reported depends on its class only (module docstring)."""
    from celery.exceptions import SoftTimeLimitExceeded

    settings = get_settings()
    if error is not None:
        if isinstance(error, SoftTimeLimitExceeded):
            fail(job.id, f"the job exceeded its time limit ({settings.worker.soft_time_limit_s} s)")
        elif isinstance(error, StoreFailed):  # ours, but with a message the tenant can read
            fail(job.id, str(error))
        elif isinstance(error, InputError):  # the client's input: they can act on the message
            logger.info("job %s failed on its input: %s", job.id, error)
            fail(job.id, f"{type(error).__name__}: {error}")
        else:
            # ours (a bug, a broken model, out of memory): logged in full here, and reported as
            # the service's failure, never as a mistake in the input; only the type reaches the client
            logger.error("job %s crashed", job.id, exc_info=error)
            fail(job.id, f"internal error ({type(error).__name__}): the service failed to run this "
                         "job, not because of its input; see the worker log")
        return "failed"
    model_name = model_name or "unknown"
    try:
        with session_scope() as session:
            stored = JobRepository(session).complete(job.id, model_name, output, settings.prices)
            if stored and read_done is not None:
                from service.memories.repository import MemoryRepository
                from workers.memories import ttl

                MemoryRepository(session).read_done(job.memory_id, read_done, ttl())
    except IntegrityError:
        logger.info("job %s already has a result; nothing stored", job.id)
        stored = False
    if read_done is not None and not stored:  # cancelled meanwhile: its file is nobody's
        from service.memories.store import memory_store

        memory_store().delete(read_done.storage_key)
    # a sample of the tenant's jobs is rerun with the full cache, to measure (not the reads and
    # questions of stored documents: their counterfactual is re-reading, priced from the read)
    if stored and job.memory_id is None:
        from workers.shadow import schedule_shadow

        schedule_shadow(job.id)
    return "done" if stored else "cancelled"
