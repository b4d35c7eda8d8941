"""Several jobs in one model batch (issue 22, item 3): the saved memory becomes throughput.

The `gpu` worker's task claims its job as always; when `worker.batch_max_jobs` > 1 it then
claims more of the queued jobs (oldest first, plain jobs only: not the reads and questions of
stored documents nor jobs keeping a retention map) while their memories fit, and runs them
together through `namm.generate_batch` (continuous batching: each job keeps its own memory,
budget and questions; answers as one at a time). Each job is finished on its own, as soon as it
ends: its result, usage record and billing are its own (billed by its own counted work, never
by the batch's wall clock), a bad input fails that job only.

How many fit: a job's memory is at most its budget (tokens, or a fraction of the document's
estimated tokens; the whole document for `full`) plus one update interval, times the model's
KV bytes per token; jobs are added while their sum stays within `worker.batch_memory_share` of
the device's free memory (GPU: torch.cuda.mem_get_info; CPU: the machine's available memory).

Guarantees: every claimed job has its heartbeat while the batch runs, so a killed worker's jobs
are all seen stale and run again by the sweep; a claim is a compare-and-set, and a result is
stored once (JobRepository.complete), so none runs twice. The companions' own broker messages
arrive later and find their job running or finished: nothing to do. A job cancelled while its
batch runs is answered `cancelled` at once; its row is not overwritten when the batch ends.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from sqlalchemy import select

from service.core.db import session_scope
from service.core.settings import get_settings
from service.jobs.repository import ClaimedJob, ClaimOutcome, JobRepository
from service.models import Document, Job, JobStatus

logger = logging.getLogger(__name__)
CHARS_PER_TOKEN = 3.5  # a document's token count, estimated before it is read (English, code)


def kv_bytes_per_token(lm) -> int:
    config = lm.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    size = next(lm.model.parameters()).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * size


def memory_bytes(job: ClaimedJob, chars: int, per_token: int, n_up: int) -> int:
    """The most KV bytes the job's memory holds (budget + one update interval)."""
    tokens = int(chars / CHARS_PER_TOKEN) + 256  # + the prompt, the questions, the answers
    budget = job.budget
    if budget is not None and budget.unit == "tokens":
        tokens = min(tokens, int(budget.value) + n_up)
    elif budget is not None:
        tokens = min(tokens, int(tokens * budget.value) + n_up)
    return tokens * per_token


def free_memory_bytes(lm) -> int:
    device = str(getattr(lm, "device", "cpu"))
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(lm.device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def batchable(job: ClaimedJob) -> bool:
    return job.kind in ("answer", "summarize", "extract") and job.memory_id is None and not job.retention


def claim_companions(first: ClaimedJob, lm, chars: int) -> list[ClaimedJob]:
    """More queued jobs to run with `first`, claimed (running, one more attempt), while their
    memories fit; [] when batching is off or nothing waits."""
    settings = get_settings()
    room = settings.worker.batch_max_jobs - 1
    if room <= 0 or not batchable(first):
        return []
    per_token, n_up = kv_bytes_per_token(lm), settings.model.n_up
    allowed = free_memory_bytes(lm) * settings.worker.batch_memory_share
    used = memory_bytes(first, chars, per_token, n_up)
    taken: list[ClaimedJob] = []
    with session_scope() as session:
        candidates = session.execute(
            select(Job.id, Document.size_bytes).join(Document, Document.id == Job.document_id)
            .where(Job.status == JobStatus.queued.value, Job.id != first.id, Job.memory_id.is_(None),
                   Job.retention.is_(False), Job.kind.in_(("answer", "summarize", "extract")))
            .order_by(Job.created_at, Job.id).limit(4 * room)).all()
    for job_id, size in candidates:
        if len(taken) >= room:
            break
        with session_scope() as session:
            outcome, job = JobRepository(session).claim(job_id, stale_after_s=settings.worker.stale_after_s)
        if outcome is not ClaimOutcome.claimed:
            continue  # another worker took it meanwhile
        need = memory_bytes(job, size, per_token, n_up)
        if used + need > allowed:
            with session_scope() as session:  # does not fit: back to the queue, attempt returned
                JobRepository(session).unclaim(job.id, job.attempt)
            break
        used += need
        taken.append(job)
    if taken:
        logger.info("job %s runs with %d more in one batch (%.1f MiB of KV at most)", first.id,
                    len(taken), used / 2**20)
    return taken


class Heartbeats:
    """Touches every job of a batch while it runs (one thread)."""

    def __init__(self, job_ids: list[str], interval_s: float):
        self.job_ids = list(job_ids)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat-batch", daemon=True)

    def _run(self) -> None:
        from workers.runner import heartbeat

        while not self._stop.wait(self.interval_s):
            for job_id in self.job_ids:
                try:
                    heartbeat(job_id)
                except Exception:  # a missed beat is harmless; the next one may work
                    logger.warning("heartbeat for %s failed", job_id, exc_info=True)

    def __enter__(self) -> "Heartbeats":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_batch(jobs: list[ClaimedJob], lm, generate_batch: Callable,
              finish: Callable[[ClaimedJob, dict | None, BaseException | None], str]) -> dict[str, str]:
    """Run `jobs` in one batch; `finish(job, output, error)` stores each as it ends. The outcome
    of each job by id."""
    from workers.runner import device_name, generation_request

    settings = get_settings()
    device = device_name(lm)
    outcomes: dict[str, str] = {}

    def on_result(index: int, outcome) -> None:
        job = jobs[index]
        if isinstance(outcome, BaseException):
            outcomes[job.id] = finish(job, None, outcome)
        else:
            output = outcome.to_dict()
            output["device"] = device
            outcomes[job.id] = finish(job, output, None)

    requests = []
    for job in jobs:
        try:
            requests.append(generation_request(job, settings.model))
        except Exception as exc:  # a bad request fails alone
            outcomes[job.id] = finish(job, None, exc)
            requests.append(None)
    todo = [i for i, r in enumerate(requests) if r is not None]
    with Heartbeats([jobs[i].id for i in todo], settings.worker.heartbeat_interval_s):
        try:
            generate_batch(lm, [requests[i] for i in todo], max_batch=settings.worker.batch_max_jobs,
                           on_result=lambda k, outcome: on_result(todo[k], outcome))
        except Exception as exc:  # the whole batch stopped (time limit, a crash): the rest fail
            for i in todo:
                if jobs[i].id not in outcomes:
                    outcomes[jobs[i].id] = finish(jobs[i], None, exc)
        # a SystemExit (Celery terminating the task: its message is handed back after a lost
        # broker connection) goes through unrecorded: the unfinished jobs stay running, and run
        # again once their heartbeat is stale, as a job alone would
    return outcomes
