"""Request and response shapes of the REST API (pydantic)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.core.contract import BudgetField, PolicyField

Kind = Literal["summarize", "answer", "extract"]
SOME_TEXT = r"[^\s\x1c-\x1f\x85]"  # a character str.strip() keeps


def whole_number(value: Any) -> Any:
    """JSON's 5.0 is the integer 5 (JSON Schema says so), which a strict model would refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def stripped_questions(questions: list[str]) -> list[str]:
    """Questions stripped; none may be empty (a validator of every request that takes them)."""
    cleaned = [q.strip() for q in questions]
    if any(not q for q in cleaned):
        raise ValueError("questions must not be empty strings")
    return cleaned


class JobOptions(BaseModel):
    """What to do with the document; the same fields come as JSON or as multipart form fields."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind | None = Field(None, description="summarize | answer | extract; default: answer "
                              "when questions are given, else summarize")
    instruction: str | None = Field(None, description="custom instruction (required for extract)")
    questions: list[str] = Field(default_factory=list)
    policy: PolicyField | None = Field(None, description="memory policy; default from settings "
                                       "(NAMM_DEFAULTS__POLICY)")
    budget: BudgetField = Field(
        None, description='{"fraction": x} (kept share of the tokens read, x in (0, 1]) or '
        '{"tokens": n} (kept tokens per layer and KV head); a plain number is a fraction, a plain '
        "number above 1 is refused as ambiguous; absent or null: the policy's default (the "
        "shipped checkpoint's budget for surprisal and namm)")
    max_new_tokens: int | None = Field(None, ge=1)
    truncate: bool = Field(False, description="cut documents longer than the model's context "
                           "instead of failing (full cache only)")
    retention: bool = Field(False, description="keep which tokens the memory still held when "
                            "the questions were asked (per token, the share of layers and KV "
                            "heads that kept it): GET /v1/jobs/{id}/retention, and the job's "
                            "page on the dashboard (/dashboard/jobs/{id})")

    _whole = field_validator("max_new_tokens", mode="before")(whole_number)

    _questions = field_validator("questions")(stripped_questions)


class JsonJobRequest(JobOptions):
    # a form's fields are text, a JSON body's are typed: 0 for false or "5" for 5 is refused here
    model_config = ConfigDict(extra="forbid", strict=True)
    # the schema states what the handler checks: some text that Python's strip() keeps (it
    # also strips U+001C-U+001F and U+0085, which a pattern's \s does not name) (issue 23 item 10)
    document: str = Field(..., description="the document text (not empty or only whitespace)",
                          json_schema_extra={"minLength": 1, "pattern": SOME_TEXT})
    document_format: Literal["text", "markdown", "html"] = "text"
    filename: str | None = None


def _as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything is stored in UTC
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class JobSubmitted(BaseModel):
    id: str
    status: str
    url: str


class DocumentOut(BaseModel):
    filename: str | None
    content_type: str
    size_bytes: int
    chars: int


class ResultOut(BaseModel):
    text: str
    answers: list[str]
    stats: dict[str, Any]


class UsageOut(BaseModel):
    """The job's usage record (docs/service.md, "Cost reports"). Counts are exact; money is
    billed by work done. full_cache_cost_micro_usd and saved_micro_usd are null where no method
    applies, and an estimate where counterfactual_estimated is true; a negative saving is a loss."""

    model: str
    policy: str
    budget: BudgetField
    device: str
    tokens_in: int
    tokens_out: int
    kv_kept_fraction: float
    kv_bytes_peak: int
    kv_bytes_full_peak: int
    kv_bytes_allocated_peak: int | None
    kv_bytes_saved_fraction: float
    kv_token_steps: float | None
    kv_token_steps_full: float | None
    kv_updates: list[list[float]] | None
    seconds: float
    seconds_prefill: float
    seconds_decode: float
    seconds_policy: float
    price_id: str | None
    device_hour_micro_usd: int | None
    billed_device_seconds: float | None
    cost_micro_usd: int
    full_cache_cost_micro_usd: int | None
    saved_micro_usd: int | None
    counterfactual_method: str | None
    counterfactual_estimated: bool
    tokens_not_reread: int | None = Field(None, description="a question on a stored document: "
                                          "the document's tokens it did not read again")
    reread_cost_micro_usd: int | None = Field(None, description="what re-reading them with the "
                                              "full cache would have cost: the reuse saving, "
                                              "apart from saved_micro_usd")


class JobOut(BaseModel):
    id: str
    status: str
    progress: float
    attempts: int
    error: str | None
    kind: str
    stored_document: str | None = Field(None, description="the stored document this job reads "
                                        "(kind read) or answers from (/v1/documents/{id})")
    instruction: str | None
    questions: list[str]
    policy: str
    budget: BudgetField
    max_new_tokens: int
    truncate: bool
    retention: str | None = Field(None, description="the retention map's URL (jobs asked "
                                  "with retention: true, once done)")
    model: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    document: DocumentOut | None = None
    result: ResultOut | None = None
    usage: UsageOut | None = None

    _utc = field_validator("created_at", "started_at", "finished_at")(_as_utc)


class RetentionOut(BaseModel):
    """What the memory kept of a job's document (namm.retention)."""

    job: str
    policy: str
    budget: BudgetField
    tokens: int = Field(description="document tokens")
    mean_share: float = Field(description="share of the document's (token, layer, KV head) entries kept")
    pieces: list[tuple[str, float]] = Field(description="[text, share] per token, in order: the "
                                           "texts put together are the document")


class JobSummary(BaseModel):
    id: str
    status: str
    progress: float
    kind: str
    policy: str
    batch_id: str | None = Field(None, description="the repository batch the job belongs to, if any")
    created_at: datetime
    finished_at: datetime | None

    _utc = field_validator("created_at", "finished_at")(_as_utc)


class JobPage(BaseModel):
    items: list[JobSummary]
    total: int
    offset: int
    limit: int


def validation_message(exc: ValidationError) -> str:
    """One readable line per problem, e.g. "policy: unknown policy 'x'; valid policies: ..."."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def job_out(job, document=None) -> JobOut:
    """A Job row (service.models.Job, result and usage loaded) as the API shows it."""
    result = usage = None
    if job.result is not None:
        result = ResultOut(text=job.result.text, answers=job.result.answers, stats=job.result.stats)
    if job.usage is not None:
        u = job.usage
        saved_fraction = 0.0
        if u.kv_bytes_full_peak > 0:
            saved_fraction = 1.0 - u.kv_bytes_peak / u.kv_bytes_full_peak
        usage = UsageOut(
            model=u.model, policy=u.policy, budget=u.budget, device=u.device,
            tokens_in=u.tokens_in, tokens_out=u.tokens_out, kv_kept_fraction=u.kv_kept_fraction,
            kv_bytes_peak=u.kv_bytes_peak, kv_bytes_full_peak=u.kv_bytes_full_peak,
            kv_bytes_allocated_peak=u.kv_bytes_allocated_peak,
            kv_bytes_saved_fraction=saved_fraction, kv_token_steps=u.kv_token_steps,
            kv_token_steps_full=u.kv_token_steps_full, kv_updates=u.kv_updates,
            seconds=u.seconds, seconds_prefill=u.seconds_prefill,
            seconds_decode=u.seconds_decode, seconds_policy=u.seconds_policy,
            price_id=u.price_id, device_hour_micro_usd=u.device_hour_micro_usd,
            billed_device_seconds=u.billed_device_seconds, cost_micro_usd=u.cost_micro_usd,
            full_cache_cost_micro_usd=u.full_cache_cost_micro_usd,
            saved_micro_usd=u.saved_micro_usd, counterfactual_method=u.counterfactual_method,
            counterfactual_estimated=u.counterfactual_estimated,
            tokens_not_reread=u.tokens_not_reread, reread_cost_micro_usd=u.reread_cost_micro_usd,
        )
    return JobOut(
        id=job.id, status=job.status, progress=job.progress, attempts=job.attempts,
        error=job.error, kind=job.kind,
        stored_document=f"/v1/documents/{job.memory_id}" if job.memory_id else None,
        instruction=job.instruction, questions=job.questions,
        policy=job.policy, budget=job.budget, max_new_tokens=job.max_new_tokens,
        truncate=job.truncate, model=job.model, created_at=job.created_at,
        retention=f"/v1/jobs/{job.id}/retention" if job.retention and job.result is not None else None,
        started_at=job.started_at, finished_at=job.finished_at,
        document=None if document is None else DocumentOut(
            filename=document.filename, content_type=document.content_type,
            size_bytes=document.size_bytes, chars=document.chars),
        result=result, usage=usage,
    )


def job_summary(job) -> JobSummary:
    return JobSummary(id=job.id, status=job.status, progress=job.progress, kind=job.kind,
                      policy=job.policy, batch_id=job.batch_id, created_at=job.created_at,
                      finished_at=job.finished_at)
