"""Request and response shapes of /v1/batches and /v1/schedules (pydantic)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.schemas import _as_utc, stripped_questions, whole_number
from service.core.contract import BudgetField, PolicyField
from service.repos.report_text import safe_markdown

Task = Literal["summaries", "overview", "memory"]


class PathSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["path"]
    path: str = Field(..., min_length=1, max_length=4096,
                      description="a directory under one of NAMM_BATCHES__ALLOWED_ROOTS")


class GitSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["git"]
    url: str = Field(..., min_length=1, max_length=2000,
                     description="https:// or file:// (under an allowed root); shallow clone",
                     json_schema_extra={"pattern": "^(https://[^/?#@\\s]+|file://)"})
    ref: str | None = Field(None, max_length=200, description="branch or tag (default branch)")


Source = Annotated[PathSource | GitSource, Field(discriminator="kind")]


def clean_questions(questions: list[str] | None) -> list[str] | None:
    """Questions stripped; none empty, none over 2000 characters."""
    if questions is None:
        return None
    cleaned = stripped_questions(questions)
    if any(len(q) > 2000 for q in cleaned):
        raise ValueError("a question is limited to 2000 characters")
    return cleaned


def clean_tasks(tasks: list[str] | None) -> list[str] | None:
    """Tasks without repeats; summaries among them (the overview is written from them)."""
    if tasks is None:
        return None
    tasks = list(dict.fromkeys(tasks))
    if "summaries" not in tasks:
        raise ValueError("tasks must include 'summaries' (the overview is written from them)")
    return tasks


class BatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[Task] = Field(default_factory=lambda: ["summaries", "overview"],
                              description="summaries (one per file), overview (from them), and "
                              "memory: the whole repository read once and kept as a stored "
                              "document (/v1/documents) that the batch's questions and later "
                              "ones are answered from",
                              json_schema_extra={"contains": {"const": "summaries"}})
    policy: PolicyField | None = Field(None, description="memory policy; default from settings")
    budget: BudgetField = Field(None, description="as for jobs; null: the policy's default")
    max_new_tokens: int | None = Field(None, ge=1, description="per file summary")
    questions: list[str] = Field(
        default_factory=list, description="questions about the whole codebase, answered once "
        "every file is read, by streaming the repository through the model with the memory "
        "bounding the cache (use an evicting policy: `full` truncates to the model's context)")

    _whole = field_validator("max_new_tokens", mode="before")(whole_number)

    _questions = field_validator("questions")(clean_questions)

    _tasks = field_validator("tasks")(clean_tasks)


class JsonBatchRequest(BatchOptions):
    # JSON only: a value of another type than the schema's (0 for false, "5" for 5) is refused
    model_config = ConfigDict(extra="forbid", strict=True)
    source: Source


class ScheduleRequest(BatchOptions):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON only, as JsonBatchRequest
    name: str | None = Field(None, max_length=200)
    cron: str = Field(..., min_length=9, max_length=100, examples=["0 2 * * *"],
                      description="5 fields: minute hour day-of-month month day-of-week")
    timezone: str = Field("UTC", max_length=64, examples=["Europe/Paris"])
    source: Source
    enabled: bool = True


# PATCH: a field left out keeps its value; null is refused for these (routes/schedules.py), and
# the schema says so, so that a client generated from it never sends one
NOT_NULL_IN_PATCH = ("cron", "timezone", "source", "tasks", "questions", "policy",
                     "max_new_tokens", "enabled")


def _absent_not_null(schema: dict) -> None:
    for name in NOT_NULL_IN_PATCH:
        prop = schema["properties"].get(name, {})
        options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
        prop.pop("default", None)
        if len(options) == 1:
            prop.pop("anyOf")
            prop.update(options[0])
        elif options:
            prop["anyOf"] = options


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_absent_not_null)
    name: str | None = Field(None, max_length=200)
    cron: str | None = Field(None, min_length=9, max_length=100)
    timezone: str | None = Field(None, max_length=64)
    source: Source | None = None
    tasks: list[Task] | None = Field(None, json_schema_extra={"contains": {"const": "summaries"}})
    questions: list[str] | None = None
    policy: PolicyField | None = None
    budget: BudgetField = None
    max_new_tokens: int | None = Field(None, ge=1)
    enabled: bool | None = None

    _whole = field_validator("max_new_tokens", mode="before")(whole_number)
    _questions = field_validator("questions")(clean_questions)  # as when created
    _tasks = field_validator("tasks")(clean_tasks)


class BatchSubmitted(BaseModel):
    id: str
    status: str
    url: str


class Progress(BaseModel):
    files_total: int
    files_done: int
    files_failed: int
    files_skipped: int
    tokens_read: int
    fraction: float


class FileOut(BaseModel):
    path: str
    language: str
    size_bytes: int
    status: str  # queued | waiting (its job waits for the tenant's quota) | done | failed | ...
    attempts: int
    tokens: int | None
    summary: str | None
    error: str | None
    job_id: str | None
    waiting_reason: str | None = None  # why a waiting file waits


class AnswerOut(BaseModel):
    question: str
    answer: str | None  # None until the batch's questions job has finished


class SkippedOut(BaseModel):
    path: str
    reason: str


class BatchSummary(BaseModel):
    id: str
    status: str
    source: dict[str, Any]
    schedule_id: str | None
    progress: Progress
    created_at: datetime
    finished_at: datetime | None

    _utc = field_validator("created_at", "finished_at")(_as_utc)


class BatchOut(BatchSummary):
    tasks: list[str]
    policy: str
    budget: BudgetField
    max_new_tokens: int
    error: str | None
    overview: str | None
    answers: list[AnswerOut]
    started_at: datetime | None
    files: list[FileOut]
    skipped: list[SkippedOut]
    usage: dict[str, int]
    stored_document: str | None = Field(None, description="task memory: the repository as a "
                                        "stored document (/v1/documents/{id}); ask it more later")

    _utc2 = field_validator("started_at")(_as_utc)


class BatchPage(BaseModel):
    items: list[BatchSummary]
    total: int
    offset: int
    limit: int


class ScheduleOut(BaseModel):
    id: str
    name: str | None
    cron: str
    timezone: str
    source: dict[str, Any]
    tasks: list[str]
    questions: list[str]
    policy: str
    budget: BudgetField
    max_new_tokens: int
    enabled: bool
    last_run_at: datetime | None
    next_run_at: datetime | None
    running_batch_id: str | None
    created_at: datetime

    _utc = field_validator("last_run_at", "next_run_at", "created_at")(_as_utc)


class SchedulePage(BaseModel):
    items: list[ScheduleOut]
    total: int
    offset: int
    limit: int


def progress_of(batch) -> Progress:
    settled = batch.files_done + batch.files_failed
    return Progress(files_total=batch.files_total, files_done=batch.files_done,
                    files_failed=batch.files_failed, files_skipped=batch.files_skipped,
                    tokens_read=batch.tokens_read,
                    fraction=1.0 if batch.status == "done" else
                    (settled / batch.files_total if batch.files_total else 0.0))


def batch_summary(batch) -> BatchSummary:
    return BatchSummary(id=batch.id, status=batch.status, source=batch.source,
                        schedule_id=batch.schedule_id, progress=progress_of(batch),
                        created_at=batch.created_at, finished_at=batch.finished_at)


def file_out(f, waiting: Collection[str] = (), waiting_reason: str | None = None) -> FileOut:
    """A file whose job waits for the tenant's quota (its job id in `waiting`) is `waiting`."""
    waits = f.status == "queued" and f.job_id in waiting
    return FileOut(path=f.path, language=f.language, size_bytes=f.size_bytes,
                   status="waiting" if waits else f.status, attempts=f.attempts, tokens=f.tokens,
                   summary=f.result, error=f.error, job_id=f.job_id,
                   waiting_reason=waiting_reason if waits else None)


def batch_out(batch, files, skipped, usage, answers=(), waiting: Collection[str] = (),
              waiting_reason: str | None = None, memory_id: str | None = None) -> BatchOut:
    return BatchOut(
        **batch_summary(batch).model_dump(), tasks=batch.tasks, policy=batch.policy,
        budget=batch.budget, max_new_tokens=batch.max_new_tokens, error=batch.error,
        overview=batch.overview, started_at=batch.started_at,
        answers=[AnswerOut(question=q, answer=a) for q, a in answers],
        files=[file_out(f, waiting, waiting_reason) for f in files],
        skipped=[SkippedOut(path=s.path, reason=s.reason) for s in skipped], usage=usage,
        stored_document=f"/v1/documents/{memory_id}" if memory_id else None)


def schedule_out(row) -> ScheduleOut:
    return ScheduleOut(id=row.id, name=row.name, cron=row.cron, timezone=row.timezone,
                       source=row.source, tasks=row.tasks, questions=row.questions or [],
                       policy=row.policy, budget=row.budget,
                       max_new_tokens=row.max_new_tokens, enabled=row.enabled,
                       last_run_at=row.last_run_at, next_run_at=row.next_run_at,
                       running_batch_id=row.running_batch_id, created_at=row.created_at)


def report_markdown(out: BatchOut) -> str:
    """The batch as a Markdown document: overview, per-file summaries, failures, skips."""
    p = out.progress
    lines = [f"# Repository report: batch {out.id}", "",
             f"- source: `{out.source}`", f"- status: {out.status}",
             f"- files: {p.files_done} done, {p.files_failed} failed, {p.files_skipped} skipped, "
             f"{p.files_total} read in all", f"- tokens read: {p.tokens_read}",
             f"- policy: {out.policy}", ""]
    if out.error:
        lines += [f"> {out.error}", ""]
    lines += ["## Overview", "", safe_markdown((out.overview or "(none)").strip()), ""]
    if out.answers:
        lines += ["## Questions", ""]
        for a in out.answers:
            answer = safe_markdown((a.answer or "(no answer yet)").strip())
            lines += [f"**{a.question}**", "", answer, ""]
    lines += ["## Files", ""]
    for f in out.files:
        lines += [f"### {f.path}", "", f"*{f.language}, {f.size_bytes} bytes, {f.status}*", ""]
        if f.summary:
            lines += [safe_markdown(f.summary.strip()), ""]
        if f.error and f.status != "done":
            lines += [f"> error: {f.error}", ""]
        if f.waiting_reason:
            lines += [f"> {f.waiting_reason}", ""]
    if out.skipped:
        lines += ["## Skipped", "", "| path | reason |", "|---|---|"]
        lines += [f"| `{s.path}` | {s.reason} |" for s in out.skipped]
        lines.append("")
    return "\n".join(lines)
