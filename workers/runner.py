"""Run one job: claim it, generate with the memory policy, store result and usage."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.schemas import SUMMARIZE_INSTRUCTION
from service.settings import get_settings
from workers import claims
from workers.claims import ClaimedJob, ClaimOutcome

logger = logging.getLogger(__name__)


class JobStopped(Exception):
    """Raised from the progress callback to abort generation (the job was cancelled)."""


def generation_arguments(job: ClaimedJob) -> dict:
    """What namm.generate is asked for each kind of job."""
    if job.kind == "summarize":
        questions, instruction = None, job.instruction or SUMMARIZE_INSTRUCTION
    elif job.kind == "answer":
        questions, instruction = job.questions, job.instruction
    else:  # extract: a custom instruction, optionally with questions
        questions, instruction = (job.questions or None), job.instruction
    return {
        "context": job.text,
        "questions": questions,
        "instruction": instruction,
        "policy": job.policy,
        "budget": None if job.policy == "full" else job.budget,
        "max_new_tokens": job.max_new_tokens,
        "truncate": job.truncate,
    }


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
        if not claims.touch(self.job_id, fraction):
            raise JobStopped(self.job_id)


class Heartbeat:
    """Touches the job row while it runs, so the sweeper can tell live jobs from lost ones
    (the progress callback is silent while the answer is being decoded)."""

    def __init__(self, job_id: str, interval_s: float):
        self.job_id = job_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                claims.touch(self.job_id)
            except Exception:  # a missed beat is harmless; the next one may work
                logger.warning("heartbeat for job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def user_error_message(exc: Exception) -> str:
    """A failure the client can act on (document too long, empty input, ...)."""
    return f"{type(exc).__name__}: {exc}"


def is_input_error(exc: Exception) -> bool:
    try:
        from namm.errors import NammError
    except ImportError:  # namm not installed: only plain ValueErrors count as bad input
        NammError = ()  # noqa: N806
    return isinstance(exc, (ValueError,)) or (bool(NammError) and isinstance(exc, NammError))


def run_job(job_id: str, *, load_model: Callable | None = None,
            generate: Callable | None = None) -> str:
    """Returns what happened, for logs and tests: done | failed | cancelled | <claim outcome>."""
    settings = get_settings()
    outcome, job = claims.claim(job_id)
    if outcome is not ClaimOutcome.claimed:
        logger.info("job %s not run: %s", job_id, outcome.value)
        return outcome.value
    assert job is not None
    from celery.exceptions import SoftTimeLimitExceeded

    try:
        with Heartbeat(job.id, settings.worker.heartbeat_interval_s):
            if load_model is None or generate is None:
                from namm import generate
                from workers.model import get_model as load_model
            lm = load_model()
            result = generate(
                lm,
                n_up=settings.model.n_up,
                progress=ProgressReporter(job.id, settings.worker.progress_interval_s),
                **generation_arguments(job),
            )
            output = result.to_dict()
    except JobStopped:
        logger.info("job %s stopped: no longer running (cancelled)", job.id)
        return "cancelled"
    except SoftTimeLimitExceeded:
        claims.fail(job.id, "the job exceeded its time limit "
                    f"({settings.worker.soft_time_limit_s} s)")
        return "failed"
    except Exception as exc:
        if is_input_error(exc):
            logger.info("job %s failed on its input: %s", job.id, exc)
            claims.fail(job.id, user_error_message(exc))
        else:
            # a bug or a broken model: logged in full here, only the type reaches the client
            logger.exception("job %s crashed", job.id)
            claims.fail(job.id, f"internal error ({type(exc).__name__}); see the worker log")
        return "failed"
    model_name = getattr(lm, "name", None) or "unknown"
    if not claims.store_result(job.id, model_name, output):
        return "cancelled"
    return "done"
