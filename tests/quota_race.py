"""The quota race of issue 23 item 3, shared by the PostgreSQL test
(tests/integration/test_quota_release_postgres.py) and the SQLite one
(tests/unit/test_batch_quota_waiting.py). A tenant at max_active_jobs = QUOTA submits a
FILES-file batch, and threads race as a busy deployment would: workers finish jobs (done or
failed, then settle and release exactly as the `namm.run_job` task does) while other threads
submit plain jobs through the API's store path (service/api/intake.py, the quota gate). A
monitor reads the tenant's active jobs in a loop, and every thread reads them again after each
of its steps: the count never passes QUOTA, and the batch still finishes. Without the tenant's
quota lock (service/jobs/quotas.py `lock_active_jobs`) releases and submissions see the same
free slot and the count goes over (5 or 6 of 3 in trials on both databases)."""

from __future__ import annotations

import random
import threading
import time
from contextlib import nullcontext

from sqlalchemy import select

QUOTA = 3
FILES = 40
OUTPUT = {"text": "Summary.", "answers": [], "tokens_in": 5, "tokens_out": 1, "seconds": 0.01,
          "kv_kept_fraction": 0.5, "kv_bytes_peak": 10, "kv_bytes_full_peak": 20}


def race(tenant: int, *, one_claim_at_a_time: bool = False) -> None:
    """The race on the configured database; `tenant` has max_active_jobs = QUOTA and no other
    jobs. `one_claim_at_a_time`: claims are made one after another (SQLite: JobRepository.claim
    is exclusive there only with one model worker process, as the embedded stack runs)."""
    from service.api.intake import Refusal, Submission, store
    from service.core.db import session_scope
    from service.core.settings import get_settings
    from service.models import Job
    from service.jobs.quotas import active_jobs
    from service.jobs.repository import ClaimOutcome, JobRepository, NewJob
    from service.repos.ingest import Ingestion, SourceFile
    from service.repos.repository import BatchRepository, NewBatch
    from workers.batches import after_job
    from workers.releases import release_after

    with session_scope() as s:
        batch_id = BatchRepository(s).create(NewBatch(
            tenant_id=tenant, source={"kind": "path", "path": "/x"}, policy="surprisal",
            budget=None, max_new_tokens=8, tasks=["summaries"])).id
    with session_scope() as s:
        sent = BatchRepository(s).record_ingestion(batch_id, Ingestion(files=[
            SourceFile(f"pkg/m{i}.py", "python", 10, f"X = {i}\n") for i in range(FILES)]))
    assert len(sent) == QUOTA

    seen: list[int] = []  # every count read: by the monitor and after every step
    errors: list[BaseException] = []
    stop_submitting, stop = threading.Event(), threading.Event()
    answers: list[str] = []  # accepted | refused
    released: list[int] = []  # per release call
    settings = get_settings()

    def count() -> int:
        with session_scope() as s:
            n = active_jobs(s, tenant)
        seen.append(n)
        return n

    def guarded(loop):
        def run():
            try:
                loop()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                stop.set()
        return run

    claim_lock = threading.Lock()

    def worker():
        rng = random.Random()
        while not stop.is_set():
            with session_scope() as s:
                queued = s.scalars(select(Job.id).where(Job.tenant_id == tenant,
                                                        Job.status == "queued")).all()
            if not queued:
                time.sleep(0.005)
                continue
            job_id = rng.choice(queued)
            with claim_lock if one_claim_at_a_time else nullcontext(), session_scope() as s:
                outcome, _ = JobRepository(s).claim(job_id, stale_after_s=60)
            if outcome is not ClaimOutcome.claimed:
                continue  # another thread has it
            count()
            with session_scope() as s:
                if rng.random() < 0.2:
                    JobRepository(s).fail(job_id, "internal error (RuntimeError)")
                else:
                    JobRepository(s).complete(job_id, "m", dict(OUTPUT), settings.prices)
            count()
            after_job(job_id)  # settles the file; a failed one's retry takes a slot or waits
            count()
            released.append(release_after(job_id))
            count()

    def submitter():
        while not stop_submitting.is_set() and not stop.is_set():
            answer = store([Submission(NewJob(
                tenant_id=tenant, text="a plain job", content_type="text/plain", size_bytes=11,
                filename=None, kind="summarize", instruction=None))], settings)[0]
            answers.append("refused" if isinstance(answer, Refusal) else "accepted")
            count()

    def monitor():
        while not stop.is_set():
            count()

    threads = [threading.Thread(target=guarded(f), daemon=True)
               for f in [worker] * 4 + [submitter] * 2 + [monitor]]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    time.sleep(3)
    stop_submitting.set()
    while time.monotonic() < deadline and not stop.is_set():
        with session_scope() as s:
            status = BatchRepository(s).get(tenant, batch_id).status
            unfinished = s.scalar(select(Job.id).where(
                Job.tenant_id == tenant, Job.status.in_(("waiting", "queued", "running")))
                .limit(1))
        if status == "done" and unfinished is None:
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert max(seen) <= QUOTA, f"the tenant had {max(seen)} active jobs at once"
    assert max(seen) == QUOTA  # the slots were used: the race was real
    assert {"accepted", "refused"} <= set(answers)  # both ends of the gate were reached
    assert sum(released) >= FILES - QUOTA  # every waiting file (and the retries) came this way
    with session_scope() as s:
        batch = BatchRepository(s).get(tenant, batch_id)
        assert batch.status == "done", (batch.status, batch.files_done, batch.files_failed)
        assert batch.files_done + batch.files_failed == FILES
    print(f"{len(seen)} counts read, {answers.count('accepted')} plain jobs accepted, "
          f"{answers.count('refused')} refused, {sum(released)} released")
