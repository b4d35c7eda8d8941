"""The batch's state machine, in one place: every change of a batch's or a batch file's status
happens here (a job's status changes only in service/jobs/repository.py, which this calls).

    create ──> queued ──ingest──> running ──last file settled──> aggregating ──> done
                 │                  │   (no overview asked: running ──> done)
                 ├──source refused──┴──> failed
                 └──cancel (queued, running, aggregating)──> cancelled

Each file is summarised by a job (`jobs.batch_id`); `settle_file` copies the job's outcome onto
the file exactly once (a compare-and-set on the file's status) and bumps the batch's counters
in SQL (`files_done = files_done + 1`), so two deliveries of one file task, or the task and the
reconciler, never count a file twice. A failed job is replaced by a new one until
`file_attempts` jobs were tried; then the file is failed and the batch goes on. The move to
`aggregating` is a compare-and-set too: exactly one caller wins it and enqueues the overview.

Every job made here (the files', a retry's, the overview's and the questions') takes a free
slot of the tenant's active-jobs quota or else waits (service/jobs/admission.py): a file whose
job waits is still `queued` here and is shown as `waiting` (`waiting_jobs`); the job's release
sends it later, and nothing else changes for the batch.

Like JobRepository, this works inside the caller's session; the caller owns the transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from namm.spec import NON_EVICTING_POLICIES, Budget
from service.core.settings import QuotaSettings, get_settings
from service.jobs.admission import queued_share
from service.jobs.repository import JobRepository, NewJob
from service.memories.repository import MemoryRepository
from service.models import (BATCH_FINISHED, Batch, BatchFile, BatchStatus, BatchUpload, Document, FileStatus, Job,
                            JobStatus, Result, SkippedFile, StoredDocument, UsageRecord, as_utc, new_id,
                            utcnow)
from service.repos.ingest import Ingestion

TASKS = ("summaries", "overview")
FILE_INSTRUCTION = ("This is the file {path} ({language}) of a code repository. Summarize what it "
                    "does: its purpose, its main functions or classes, and how it is used.")
UNFINISHED = (JobStatus.waiting.value, JobStatus.queued.value, JobStatus.running.value)
QUESTIONS_INSTRUCTION = ("This is the source code of one repository, file by file in reading "
                         "order. Answer from the code.")
OVERVIEW_INSTRUCTION = ("These are summaries of the files of one code repository, in reading "
                        "order. Write an overview of the repository: what it is for, its main "
                        "parts, and how they fit together.")


@dataclass
class NewBatch:
    tenant_id: int
    source: dict[str, Any]
    policy: str
    budget: Budget | None
    max_new_tokens: int
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    questions: list[str] = field(default_factory=list)  # about the whole repository
    upload: tuple[str, bytes] | None = None  # (filename, archive bytes)
    schedule_id: str | None = None


@dataclass
class IngestClaim:
    id: str
    tenant_id: int
    source: dict[str, Any]
    upload: bytes | None


class FileStep(str, enum.Enum):
    settled = "settled"  # the file is done or failed now
    retry = "retry"  # a new job was made for it: enqueue the file task again
    waiting = "waiting"  # its job has not finished (or someone else settled it)


@dataclass
class Settlement:
    step: FileStep
    batch_id: str | None = None
    next_action: str | None = None  # "overview" | "done" | None: what the batch needs now
    retry_job_id: str | None = None  # step retry: the new job to send


def _text_of(path: str, text: str) -> str:
    return f"File: {path}\n\n{text}"


class BatchRepository:
    def __init__(self, session: Session, quotas: QuotaSettings | None = None):
        self.session = session
        self._quotas = quotas  # the tenants' default quotas; None: the settings'

    def _queued_share(self, tenant_id: int, wanted: int) -> int | None:
        """How many of `wanted` new jobs of the tenant are queued; the rest wait."""
        quotas = self._quotas or get_settings().quotas
        return queued_share(self.session, tenant_id, wanted, quotas)

    # ---- create / read ---------------------------------------------------------------------
    def create(self, new: NewBatch) -> Batch:
        batch = Batch(id=new_id(), tenant_id=new.tenant_id, schedule_id=new.schedule_id,
                      source=new.source, tasks=list(new.tasks), questions=list(new.questions),
                      policy=new.policy,
                      max_new_tokens=new.max_new_tokens, status=BatchStatus.queued.value,
                      files_total=0, files_done=0, files_failed=0, files_skipped=0,
                      tokens_read=0, created_at=utcnow())
        batch.budget = new.budget
        self.session.add(batch)
        if new.upload is not None:
            self.session.add(BatchUpload(batch_id=batch.id, filename=new.upload[0][:500],
                                         data=new.upload[1]))
        self.session.flush()
        return batch

    def get(self, tenant_id: int, batch_id: str) -> Batch | None:
        return self.session.scalar(
            select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))

    def page(self, tenant_id: int, *, status: str | None, offset: int,
             limit: int) -> tuple[list[Batch], int]:
        where = [Batch.tenant_id == tenant_id]
        if status:
            where.append(Batch.status == status)
        total = self.session.scalar(select(func.count()).select_from(Batch).where(*where)) or 0
        rows = self.session.scalars(select(Batch).where(*where)
                                    .order_by(Batch.created_at.desc(), Batch.id)
                                    .offset(offset).limit(limit)).all()
        return list(rows), total

    def files(self, batch_id: str) -> list[BatchFile]:
        return list(self.session.scalars(
            select(BatchFile).where(BatchFile.batch_id == batch_id).order_by(BatchFile.position)))

    def waiting_jobs(self, batch_id: str) -> set[str]:
        """The batch's jobs that wait for the tenant's quota (their files show `waiting`)."""
        return set(self.session.scalars(select(Job.id).where(
            Job.batch_id == batch_id, Job.status == JobStatus.waiting.value)))

    def skipped(self, batch_id: str) -> list[SkippedFile]:
        return list(self.session.scalars(
            select(SkippedFile).where(SkippedFile.batch_id == batch_id).order_by(SkippedFile.id)))

    def usage_totals(self, batch_id: str) -> dict[str, int]:
        """What the batch's jobs consumed and cost (usage records joined on jobs.batch_id)."""
        row = self.session.execute(
            select(func.count(UsageRecord.id), func.coalesce(func.sum(UsageRecord.tokens_in), 0),
                   func.coalesce(func.sum(UsageRecord.tokens_out), 0),
                   func.coalesce(func.sum(UsageRecord.cost_micro_usd), 0),
                   func.coalesce(func.sum(UsageRecord.full_cache_cost_micro_usd), 0))
            .join(Job, Job.id == UsageRecord.job_id).where(Job.batch_id == batch_id)).one()
        return {"jobs": int(row[0]), "tokens_in": int(row[1]), "tokens_out": int(row[2]),
                "cost_micro_usd": int(row[3]), "full_cache_cost_micro_usd": int(row[4])}

    # ---- cancel ----------------------------------------------------------------------------
    def cancel(self, tenant_id: int, batch_id: str) -> Batch | None:
        """queued|running|aggregating -> cancelled, with its unfinished (and waiting) jobs and
        its files."""
        batch = self.session.scalar(select(Batch).where(
            Batch.id == batch_id, Batch.tenant_id == tenant_id).with_for_update())
        if batch is None or batch.status in BATCH_FINISHED:
            return batch
        self.session.execute(
            update(Batch).where(Batch.id == batch_id)
            .values(status=BatchStatus.cancelled.value, finished_at=utcnow(),
                    error="cancelled by the client"))
        jobs = JobRepository(self.session)
        for job_id in self.session.scalars(select(Job.id).where(
                Job.batch_id == batch_id, Job.status.in_(UNFINISHED))):
            jobs.cancel(tenant_id, job_id)
        self.session.execute(
            update(BatchFile).where(BatchFile.batch_id == batch_id,
                                    BatchFile.status == FileStatus.queued.value)
            .values(status=FileStatus.cancelled.value, finished_at=utcnow()))
        self.session.expire_all()
        return self.get(tenant_id, batch_id)

    # ---- ingestion -------------------------------------------------------------------------
    def ingest_claim(self, batch_id: str, *, stale_after_s: float | None = None) -> IngestClaim | None:
        """A queued batch's source (and uploaded archive), its ingestion heartbeat touched; None
        when it was ingested already, failed or was cancelled (a second delivery of the
        ingestion task is a no-op), or when another worker is reading it: its heartbeat is
        younger than `stale_after_s` (None: no such check)."""
        batch = self.session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
        if batch is None or batch.status != BatchStatus.queued.value:
            return None
        now = utcnow()
        beat = as_utc(batch.ingest_heartbeat_at)
        if stale_after_s is not None and beat is not None and now - beat < timedelta(seconds=stale_after_s):
            return None
        batch.ingest_heartbeat_at = now
        upload = self.session.scalar(select(BatchUpload.data)
                                     .where(BatchUpload.batch_id == batch_id))
        return IngestClaim(batch.id, batch.tenant_id, dict(batch.source), upload)

    def ingest_heartbeat(self, batch_id: str) -> bool:
        """The ingesting worker is alive; False once the batch left `queued` (cancelled)."""
        done = self.session.execute(
            update(Batch).where(Batch.id == batch_id, Batch.status == BatchStatus.queued.value)
            .values(ingest_heartbeat_at=utcnow()))
        return done.rowcount == 1

    def fail(self, batch_id: str, message: str) -> None:
        """queued -> failed: the source was refused (bad archive, clone failed)."""
        self.session.execute(
            update(Batch).where(Batch.id == batch_id, Batch.status == BatchStatus.queued.value)
            .values(status=BatchStatus.failed.value, error=message[:2000], finished_at=utcnow()))
        self.session.execute(delete(BatchUpload).where(BatchUpload.batch_id == batch_id))

    def record_ingestion(self, batch_id: str, ingestion: Ingestion) -> list[int]:
        """queued -> running: one job per kept file, the files in reading order, the skipped
        files with their reasons. Returns the job ids to send, in reading order ([] if another
        delivery got here first): the ones within the tenant's quota; the others wait. A batch
        with no file to read is done at once."""
        batch = self.session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
        if batch is None or batch.status != BatchStatus.queued.value:
            return []
        now = utcnow()
        if ingestion.skipped:
            self.session.execute(insert(SkippedFile), [
                {"batch_id": batch_id, "path": path[:1000], "reason": reason}
                for path, reason in ingestion.skipped])
        queued = self._queued_share(batch.tenant_id, len(ingestion.files))
        job_ids = JobRepository(self.session).create([
            NewJob(tenant_id=batch.tenant_id, text=_text_of(f.path, f.text),
                   content_type="text/plain", size_bytes=f.size_bytes, filename=f.path[:500],
                   kind="summarize", instruction=FILE_INSTRUCTION.format(path=f.path,
                                                                         language=f.language),
                   policy=batch.policy, budget=batch.budget, max_new_tokens=batch.max_new_tokens,
                   truncate=batch.policy in NON_EVICTING_POLICIES, max_attempts=3)
            for f in ingestion.files], queued=queued)
        if job_ids:
            self.session.execute(update(Job).where(Job.id.in_(job_ids)).values(batch_id=batch_id))
            self.session.execute(insert(BatchFile), [
                {"batch_id": batch_id, "position": i, "path": f.path[:1000],
                 "language": f.language, "size_bytes": f.size_bytes,
                 "status": FileStatus.queued.value, "attempts": 1, "job_id": job_id}
                for i, (f, job_id) in enumerate(zip(ingestion.files, job_ids))])
        done = not job_ids
        self.session.execute(
            update(Batch).where(Batch.id == batch_id).values(
                status=(BatchStatus.done if done else BatchStatus.running).value,
                files_total=len(job_ids), files_skipped=len(ingestion.skipped), started_at=now,
                finished_at=now if done else None,
                overview="The repository has no file to read." if done else None))
        self.session.execute(delete(BatchUpload).where(BatchUpload.batch_id == batch_id))
        self.session.flush()
        return job_ids if queued is None else job_ids[:queued]

    # ---- files -----------------------------------------------------------------------------
    def job_target(self, job_id: str) -> tuple[str, Any] | None:
        """("file", file id) for a file's job, ("aggregate", batch id) for the overview's or
        the questions' job of a batch; None for a plain job."""
        batch_id = self.session.scalar(select(Job.batch_id).where(Job.id == job_id))
        if batch_id is None:
            return None
        file_id = self.session.scalar(select(BatchFile.id).where(BatchFile.job_id == job_id))
        if file_id is not None:
            return "file", file_id
        return "aggregate", batch_id

    def file_job(self, file_id: int) -> str | None:
        """The job to run for a queued file of a running batch; None otherwise."""
        row = self.session.execute(
            select(BatchFile.job_id, BatchFile.status, Batch.status)
            .join(Batch, Batch.id == BatchFile.batch_id).where(BatchFile.id == file_id)).first()
        if row is None or row[1] != FileStatus.queued.value:
            return None
        if row[2] != BatchStatus.running.value:
            return None
        return row[0]

    def settle_file(self, file_id: int, *, file_attempts: int) -> Settlement:
        """Copy the finished job's outcome onto the file, once; see the module docstring."""
        file = self.session.scalar(select(BatchFile).where(BatchFile.id == file_id)
                                   .with_for_update())
        if file is None:
            return Settlement(FileStep.waiting)
        batch_id = file.batch_id
        if file.status != FileStatus.queued.value or file.job_id is None:
            return Settlement(FileStep.waiting, batch_id, self._next_action(batch_id))
        job = self.session.get(Job, file.job_id)
        if job is None or job.status in UNFINISHED:
            return Settlement(FileStep.waiting, batch_id)
        now = utcnow()
        if job.status == JobStatus.done.value:
            text = self.session.scalar(select(Result.text).where(Result.job_id == job.id)) or ""
            tokens = self.session.scalar(
                select(UsageRecord.tokens_in).where(UsageRecord.job_id == job.id)) or 0
            self._set_file(file_id, FileStatus.done, result=text, tokens=tokens, finished_at=now)
            self.session.execute(update(Batch).where(Batch.id == batch_id).values(
                files_done=Batch.files_done + 1, tokens_read=Batch.tokens_read + tokens))
        elif job.status == JobStatus.failed.value and file.attempts < file_attempts:
            batch = self.session.get(Batch, batch_id)
            if batch is None or batch.status != BatchStatus.running.value:
                return Settlement(FileStep.waiting, batch_id)
            text = job.document.text
            queued = self._queued_share(job.tenant_id, 1)
            new_job = JobRepository(self.session).create([NewJob(
                tenant_id=job.tenant_id, text=text, content_type="text/plain",
                size_bytes=len(text.encode("utf-8")), filename=file.path[:500], kind=job.kind,
                instruction=job.instruction, policy=job.policy, budget=job.budget,
                max_new_tokens=job.max_new_tokens, truncate=job.truncate,
                max_attempts=job.max_attempts)], queued=queued)[0]
            self.session.execute(update(Job).where(Job.id == new_job).values(batch_id=batch_id))
            self.session.execute(update(BatchFile).where(BatchFile.id == file_id).values(
                job_id=new_job, attempts=BatchFile.attempts + 1, error=job.error))
            return Settlement(FileStep.retry, batch_id,  # a waiting one is sent by its release
                              retry_job_id=None if queued == 0 else new_job)
        else:  # failed for good, or cancelled
            status = FileStatus.cancelled if job.status == JobStatus.cancelled.value \
                else FileStatus.failed
            self._set_file(file_id, status, error=job.error, finished_at=now)
            if status is FileStatus.failed:
                self.session.execute(update(Batch).where(Batch.id == batch_id).values(
                    files_failed=Batch.files_failed + 1))
        self.session.flush()
        return Settlement(FileStep.settled, batch_id, self._next_action(batch_id))

    def _set_file(self, file_id: int, status: FileStatus, **values: Any) -> None:
        self.session.execute(update(BatchFile).where(
            BatchFile.id == file_id, BatchFile.status == FileStatus.queued.value)
            .values(status=status.value, **values))

    def _next_action(self, batch_id: str) -> str | None:
        """running and every file settled -> aggregating (or done without an overview); a
        compare-and-set, so exactly one caller gets the action."""
        batch = self.session.get(Batch, batch_id)
        self.session.refresh(batch)
        if batch is None or batch.status != BatchStatus.running.value:
            return None
        if batch.files_done + batch.files_failed < batch.files_total:
            return None
        wants_overview = ("overview" in (batch.tasks or []) and batch.files_done > 0) \
            or bool(batch.questions)
        target = BatchStatus.aggregating if wants_overview else BatchStatus.done
        values: dict[str, Any] = {"status": target.value}
        if target is BatchStatus.done:
            values["finished_at"] = utcnow()
        moved = self.session.execute(update(Batch).where(
            Batch.id == batch_id, Batch.status == BatchStatus.running.value).values(**values))
        if (moved.rowcount or 0) != 1:
            return None
        return "overview" if wants_overview else "done"

    # ---- overview --------------------------------------------------------------------------
    def overview_job(self, batch_id: str, *, max_chars: int) -> str | None:
        """The overview's job for an aggregating batch, made from the file summaries the first
        time; None when the batch is not aggregating."""
        batch = self.session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
        if batch is None or batch.status != BatchStatus.aggregating.value:
            return None
        if batch.overview_job_id:
            return batch.overview_job_id
        if "overview" not in (batch.tasks or []) or batch.files_done == 0:
            return None
        parts, used = [], 0
        for file in self.files(batch_id):
            if file.status != FileStatus.done.value or not file.result:
                continue
            part = f"## {file.path}\n{file.result.strip()}\n"
            if used + len(part) > max_chars:
                break
            parts.append(part)
            used += len(part)
        text = "\n".join(parts)
        job_id = JobRepository(self.session).create([NewJob(
            tenant_id=batch.tenant_id, text=text, content_type="text/markdown",
            size_bytes=len(text.encode("utf-8")), filename="overview.md", kind="summarize",
            instruction=OVERVIEW_INSTRUCTION, policy=batch.policy, budget=batch.budget,
            max_new_tokens=max(batch.max_new_tokens, 64),
            truncate=batch.policy in NON_EVICTING_POLICIES)],
            queued=self._queued_share(batch.tenant_id, 1))[0]
        self.session.execute(update(Job).where(Job.id == job_id).values(batch_id=batch_id))
        self.session.execute(update(Batch).where(Batch.id == batch_id)
                             .values(overview_job_id=job_id))
        return job_id

    def questions_job(self, batch_id: str, *, max_chars: int) -> tuple[str | None, bool]:
        """The job answering the batch's questions over the whole repository (the files' texts
        in reading order, up to `max_chars`), made the first time: (job id, made now)."""
        batch = self.session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
        if batch is None or batch.status != BatchStatus.aggregating.value or not batch.questions:
            return None, False
        existing = self._questions_job_id(batch_id)
        if existing:
            return existing, False
        question = NewJob(
            tenant_id=batch.tenant_id, text="", content_type="text/plain", size_bytes=0,
            filename="repository.txt", kind="answer", instruction=QUESTIONS_INSTRUCTION,
            questions=list(batch.questions), policy=batch.policy, budget=batch.budget,
            max_new_tokens=max(batch.max_new_tokens, 32), truncate=batch.policy in NON_EVICTING_POLICIES)
        memory = self._memory(batch_id)
        if memory is not None:  # task memory: answered from the repository's stored document
            job_id = MemoryRepository(self.session).question(memory, question)
        else:
            question.text = self._repository_text(batch_id, max_chars)
            question.size_bytes = len(question.text.encode("utf-8"))
            job_id = JobRepository(self.session).create(
                [question], queued=self._queued_share(batch.tenant_id, 1))[0]
        self.session.execute(update(Job).where(Job.id == job_id).values(batch_id=batch_id))
        return job_id, True

    def _repository_text(self, batch_id: str, max_chars: int) -> str:
        """The files' texts in reading order, up to `max_chars`."""
        parts, used = [], 0
        for text in self.session.scalars(
                select(Document.text).join(Job, Job.document_id == Document.id)
                .join(BatchFile, BatchFile.job_id == Job.id)
                .where(BatchFile.batch_id == batch_id).order_by(BatchFile.position)):
            if used + len(text) > max_chars:
                break
            parts.append(text)
            used += len(text)
        return "\n\n".join(parts)

    def memory_job(self, batch_id: str, *, max_chars: int, n_up: int, ttl) -> tuple[str | None, bool]:
        """Task memory: the repository read once into a stored document (its read job, kind
        `read`, belongs to the batch), made the first time: (read job id, made now)."""
        batch = self.session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
        if batch is None or batch.status != BatchStatus.aggregating.value \
                or "memory" not in (batch.tasks or []) or batch.files_done == 0:
            return None, False
        existing = self._memory(batch_id)
        if existing is not None:
            return existing.read_job_id, False
        text = self._repository_text(batch_id, max_chars)
        read = NewJob(tenant_id=batch.tenant_id, text=text, content_type="text/plain",
                      size_bytes=len(text.encode("utf-8")), filename="repository.txt", kind="read",
                      instruction=None, policy=batch.policy, budget=batch.budget, max_new_tokens=1)
        row = MemoryRepository(self.session).create(
            read, n_up=n_up, ttl=ttl, queued=self._queued_share(batch.tenant_id, 1))
        self.session.execute(update(Job).where(Job.id == row.read_job_id).values(batch_id=batch_id))
        return row.read_job_id, True

    def _memory(self, batch_id: str) -> StoredDocument | None:
        return self.session.scalar(
            select(StoredDocument).join(Job, Job.id == StoredDocument.read_job_id)
            .where(Job.batch_id == batch_id, Job.kind == "read").limit(1))

    def memory_id(self, batch_id: str) -> str | None:
        row = self._memory(batch_id)
        return None if row is None else row.id

    def _questions_job_id(self, batch_id: str) -> str | None:
        return self.session.scalar(select(Job.id).where(
            Job.batch_id == batch_id, Job.kind == "answer").order_by(Job.created_at).limit(1))

    def answers(self, batch: Batch) -> list[tuple[str, str | None]]:
        """(question, answer or None) for the batch's questions."""
        if not batch.questions:
            return []
        job_id = self._questions_job_id(batch.id)
        got = self.session.scalar(select(Result.answers).where(Result.job_id == job_id)) \
            if job_id else None
        got = list(got or [])
        return [(q, got[i] if i < len(got) else None) for i, q in enumerate(batch.questions)]

    def finish(self, batch_id: str) -> bool:
        """aggregating -> done once the overview's and the questions' jobs have finished (their
        text, or their error)."""
        batch = self.session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
        if batch is None or batch.status != BatchStatus.aggregating.value:
            return False
        wants_overview = "overview" in (batch.tasks or []) and batch.files_done > 0
        jobs = {"overview": batch.overview_job_id if wants_overview else None,
                "questions": self._questions_job_id(batch_id) if batch.questions else None}
        wanted = {"overview": wants_overview, "questions": bool(batch.questions)}
        errors = []
        values: dict[str, Any] = {"status": BatchStatus.done.value, "finished_at": utcnow()}
        for name, job_id in jobs.items():
            if not wanted[name]:
                continue
            job = self.session.get(Job, job_id) if job_id else None
            if job is None:
                return False  # not made yet: start_aggregation makes it
            if job.status in UNFINISHED:
                return False
            if job.status != JobStatus.done.value:
                errors.append(f"the {name} could not be written: {job.error}")
            elif name == "overview":
                values["overview"] = self.session.scalar(
                    select(Result.text).where(Result.job_id == job.id))
        if errors:
            values["error"] = "; ".join(errors)[:2000]
        self.session.execute(update(Batch).where(Batch.id == batch_id,
                                                 Batch.status == BatchStatus.aggregating.value)
                             .values(**values))
        return True

    # ---- repair ----------------------------------------------------------------------------
    def unsettled_files(self, limit: int = 500) -> list[int]:
        """Queued files of running batches whose job has finished: their file task was lost
        (or died between the job's end and the settling)."""
        return list(self.session.scalars(
            select(BatchFile.id).join(Job, Job.id == BatchFile.job_id)
            .join(Batch, Batch.id == BatchFile.batch_id)
            .where(BatchFile.status == FileStatus.queued.value,
                   Batch.status == BatchStatus.running.value,
                   Job.status.in_((JobStatus.done.value, JobStatus.failed.value,
                                   JobStatus.cancelled.value)))
            .limit(limit)))

    def stalled(self, *, older_than_s: float, stale_after_s: float = 0.0) -> tuple[list[str], list[str]]:
        """(queued batches not ingested for a while and whose ingestion nobody has touched for
        `stale_after_s`, aggregating batches started a while ago): the tick resends the first
        and finishes (or completes the jobs of) the second."""
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_s)
        beat_cutoff = now - timedelta(seconds=stale_after_s)
        queued = list(self.session.scalars(select(Batch.id).where(
            Batch.status == BatchStatus.queued.value, Batch.created_at < cutoff,
            (Batch.ingest_heartbeat_at.is_(None)) | (Batch.ingest_heartbeat_at < beat_cutoff))))
        aggregating = list(self.session.scalars(select(Batch.id).where(
            Batch.status == BatchStatus.aggregating.value, Batch.started_at < cutoff)))
        return queued, aggregating

