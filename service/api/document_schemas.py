"""Request and response shapes of /v1/documents (stored documents, service/memories)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.schemas import SOME_TEXT, JobOptions, _as_utc, stripped_questions, whole_number
from service.core.contract import BudgetField, PolicyField

DOCUMENTS_PATH = "/v1/documents"


class DocumentOptions(BaseModel):
    """How the document is read and kept; the same fields come as JSON or as form fields."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicyField | None = Field(None, description="memory policy the document is read "
                                       "with and answered from; default from settings")
    budget: BudgetField = Field(None, description="as for jobs; null: the policy's default")


class JsonDocumentRequest(DocumentOptions):
    model_config = ConfigDict(extra="forbid", strict=True)
    document: str = Field(..., description="the document text (not empty or only whitespace)",
                          json_schema_extra={"minLength": 1, "pattern": SOME_TEXT})
    document_format: Literal["text", "markdown", "html"] = "text"
    filename: str | None = None


class QuestionRequest(BaseModel):
    """Questions on a stored document: answered from its memory, without reading it again."""

    model_config = ConfigDict(extra="forbid", strict=True)

    questions: list[str] = Field(default_factory=list, description="answered one by one, each "
                                 "from the memory as the read left it")
    instruction: str | None = Field(None, description="without questions: what to do with the "
                                    "document (default: summarize it)")
    max_new_tokens: int | None = Field(None, ge=1)

    _whole = field_validator("max_new_tokens", mode="before")(whole_number)

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None  # blank: no instruction

    _questions = field_validator("questions")(stripped_questions)

    def job_options(self) -> JobOptions:
        kind = "answer" if self.questions else ("extract" if self.instruction else "summarize")
        return JobOptions(kind=kind, questions=self.questions, instruction=self.instruction,
                          max_new_tokens=self.max_new_tokens)


class StoredDocumentOut(BaseModel):
    id: str
    status: Literal["reading", "ready", "failed"] = Field(
        description="reading: the read job runs (questions asked now wait for it, then run); "
                    "ready: questions are answered from the memory; failed: see error")
    error: str | None
    policy: str
    budget: BudgetField
    filename: str | None
    content_type: str
    size_bytes: int
    tokens: int | None = Field(description="tokens read")
    kept_fraction: float | None = Field(description="share of the tokens the memory keeps")
    bytes_stored: int = Field(description="bytes of the memory file (0: none stored now; the "
                              "next question rebuilds it from the text)")
    full_cache_bytes: int | None = Field(description="bytes a full KV cache of the document holds")
    stored_fraction: float | None = Field(description="bytes_stored / full_cache_bytes")
    read_job: str | None = Field(description="the job that reads the document (its usage "
                                 "record bills the read, once)")
    questions_url: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime | None = Field(description="the document (text and memory) is deleted "
                                        "then unless a question uses it before")

    _utc = field_validator("created_at", "last_used_at", "expires_at")(_as_utc)


class StoredDocumentPage(BaseModel):
    items: list[StoredDocumentOut]
    total: int
    offset: int
    limit: int


def stored_document_out(row, meta: tuple[str | None, str, int]) -> StoredDocumentOut:
    filename, content_type, size = meta
    share = None
    if row.full_cache_bytes:
        share = row.bytes_stored / row.full_cache_bytes
    return StoredDocumentOut(
        id=row.id, status=row.status, error=row.error, policy=row.policy, budget=row.budget,
        filename=filename, content_type=content_type, size_bytes=size, tokens=row.tokens,
        kept_fraction=row.kept_fraction, bytes_stored=row.bytes_stored,
        full_cache_bytes=row.full_cache_bytes, stored_fraction=share,
        read_job=f"/v1/jobs/{row.read_job_id}" if row.read_job_id else None,
        questions_url=f"{DOCUMENTS_PATH}/{row.id}/questions", created_at=row.created_at,
        last_used_at=row.last_used_at, expires_at=row.expires_at)
