"""Stored documents (issue 20): read a document once, ask about it for weeks.

    POST   /v1/documents                  JSON text or multipart upload -> 202, the read starts
    GET    /v1/documents                  yours, newest first, paginated
    GET    /v1/documents/{id}             status, tokens, bytes stored against a full cache, ...
    POST   /v1/documents/{id}/questions   -> 202, a job answered from the memory (GET /v1/jobs/{id})
    DELETE /v1/documents/{id}             text and memory deleted; billing records stay

A question on a document still being read waits for the read (status `waiting`), then runs.
Reads and questions are jobs: quotas (429), progress, cancellation and usage records work as on
POST /v1/jobs; the read is billed once, to the document, and each question by its own work.
Idempotency-Key works on both POSTs as on jobs. Another tenant's id is a 404.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.api.deps import SessionDep, TenantDep
from service.api.document_schemas import (DOCUMENTS_PATH, DocumentOptions, JsonDocumentRequest, QuestionRequest,
                                          StoredDocumentOut, StoredDocumentPage, stored_document_out)
from service.api.intake import idempotency_key, request_sha256
from service.api.routes.jobs import MAX_LIMIT, MAX_OFFSET, release_waiting, uuid_or_404
from service.api.schemas import JobSubmitted, validation_message
from service.api.text_checks import check_tree
from service.core.settings import Settings, get_settings
from service.memories.repository import MemoryRepository
from service.models import MemoryStatus

QUESTION_BODY_LIMIT = 512 * 1024
DocumentId = Annotated[str, PathParam(max_length=64, description="the stored document's id (a UUID)")]


def get_memories(session: SessionDep) -> MemoryRepository:
    return MemoryRepository(session)


MemoriesDep = Annotated[MemoryRepository, Depends(get_memories)]


def _ttl(settings: Settings) -> timedelta:
    return timedelta(days=settings.memories.ttl_days)


def _over_quota_or_none(session, tenant_id: int, settings: Settings) -> None:
    """429 with Retry-After when a new active job is over the tenant's quota (counted under the
    tenant's quota lock, in the transaction that stores the job)."""
    from service.jobs.quotas import QuotaGate

    over = QuotaGate(lambda: nullcontext(session), settings.quotas, lock=True).admit(tenant_id)
    if over is not None:
        raise HTTPException(429, over.message, headers={"Retry-After": str(over.retry_after_s)})


def _check_storage(memories: MemoryRepository, tenant_id: int, settings: Settings) -> None:
    cap = settings.memories.max_tenant_bytes
    if cap is not None:
        used = memories.tenant_bytes(tenant_id)
        if used >= cap:
            raise HTTPException(403, f"storage quota reached: your stored documents hold {used} "
                                     f"bytes of {cap}; delete some (DELETE {DOCUMENTS_PATH}/{{id}})")


def _replay(memories: MemoryRepository, tenant_id: int, key: str | None, sha: str, settings: Settings):
    """The earlier use of an Idempotency-Key: its job id, or None for a first use; 409 for a key
    used with another request (or on another route)."""
    from service.jobs import idempotency

    if key is None:
        return None
    earlier = idempotency.find(memories.session, tenant_id, key, sha, settings.api.idempotency_ttl_s)
    if earlier is None:
        return None
    if not earlier.same_request:
        raise HTTPException(409, "Idempotency-Key already used with another request; use a new key")
    return earlier.job_id


def _keyed_sha(route: str, payload_sha: str) -> str:
    # a key's request includes its route: the same body on POST /v1/jobs is another request
    return hashlib.sha256(f"{route}\0{payload_sha}".encode()).hexdigest()


def _parse_document(payload: dict, settings: Settings):
    from service.api.submission import parse_document

    try:
        return parse_document(payload, settings, JsonDocumentRequest, DocumentOptions)
    except RecursionError:
        raise HTTPException(400, "the JSON body nests too deeply") from None


def _new_read(tenant_id: int, options, text: str, content_type: str, size: int, filename: str | None,
              settings: Settings):
    from service.api.submission import check_policy_available, default_budget_for
    from service.jobs.repository import NewJob

    if filename and len(filename) > settings.limits.max_filename_chars:
        raise HTTPException(422, f"filename: {len(filename)} characters; the limit is "
                                 f"{settings.limits.max_filename_chars}")
    policy = options.policy or settings.defaults.policy
    check_policy_available(policy, settings)
    budget = None if policy == "full" else (options.budget if options.budget is not None
                                            else default_budget_for(policy, settings))
    return NewJob(tenant_id=tenant_id, text=text, content_type=content_type, size_bytes=size,
                  filename=filename or None, kind="read", instruction=None, policy=policy, budget=budget,
                  max_new_tokens=1, max_attempts=settings.worker.max_attempts)


async def _question_body(request: Request) -> QuestionRequest:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "send the questions as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > QUESTION_BODY_LIMIT:
            raise HTTPException(413, f"a question request is limited to {QUESTION_BODY_LIMIT} bytes")
    try:
        try:
            decoded = json.loads(body)
        except ValueError:
            raise HTTPException(400, "the body is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise HTTPException(422, "the body must be a JSON object")
        check_tree(decoded)  # NUL and lone surrogates: the same 422 as POST /v1/jobs
        return QuestionRequest.model_validate(decoded)
    except ValidationError as exc:
        raise HTTPException(422, validation_message(exc)) from None
    except RecursionError:
        raise HTTPException(400, "the JSON body nests too deeply") from None


def _document_body() -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": JsonDocumentRequest.model_json_schema()},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "text, Markdown, HTML or PDF"},
                           "policy": {"type": "string"},
                           "budget": {"type": "string", "description": 'a fraction ("0.3") or a '
                                      'JSON budget object (\'{"tokens": 2048}\')'}}}}}}}


def _question_body_schema() -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": QuestionRequest.model_json_schema()}}},
        "parameters": [{
            "name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            "description": "retries with the same key and body answer the first job"}]}


def document_router() -> APIRouter:
    router = APIRouter(prefix=DOCUMENTS_PATH, tags=["documents"])

    @router.post("", status_code=202, response_model=StoredDocumentOut,
                 summary="Store a document: read it once into a memory for later questions",
                 openapi_extra={**_document_body(), "parameters": _question_body_schema()["parameters"]},
                 responses={400: {"description": "unreadable body"}, 403: {"description": "storage quota"},
                            409: {"description": "Idempotency-Key used with another request"},
                            413: {"description": "document too large"},
                            415: {"description": "unsupported content type"},
                            422: {"description": "invalid options or document"},
                            429: {"description": "tenant quota reached (see Retry-After)"}})
    async def create_route(request: Request, tenant_id: TenantDep, memories: MemoriesDep) -> StoredDocumentOut:
        from service.api.submission import read_body

        settings = get_settings()
        payload = await read_body(request, settings)
        key = idempotency_key(payload)
        options, text, content_type, size, filename = await run_in_threadpool(_parse_document, payload, settings)
        sha = _keyed_sha(DOCUMENTS_PATH, request_sha256(payload)) if key else ""
        return await run_in_threadpool(_create, memories, tenant_id, key, sha,
                                       _new_read(tenant_id, options, text, content_type, size, filename, settings),
                                       settings)

    def _create(memories: MemoryRepository, tenant_id: int, key, sha, read, settings) -> StoredDocumentOut:
        from service.core.queue import enqueue_jobs
        from service.jobs import idempotency
        from service.models import StoredDocument

        earlier = _replay(memories, tenant_id, key, sha, settings)
        if earlier is not None:
            row = memories.session.query(StoredDocument).filter_by(read_job_id=earlier, tenant_id=tenant_id).first()
            if row is None or row.status == MemoryStatus.expired.value:
                raise HTTPException(409, "Idempotency-Key already used with another request; use a new key")
            return stored_document_out(row, memories.document_meta(row.document_id))
        _check_storage(memories, tenant_id, settings)
        _over_quota_or_none(memories.session, tenant_id, settings)
        row = memories.create(read, n_up=settings.model.n_up, ttl=_ttl(settings))
        if key is not None:
            idempotency.remember(memories.session, tenant_id, key, sha, row.read_job_id)
        memories.session.commit()
        enqueue_jobs([row.read_job_id])  # after the commit: the worker must find the row
        return stored_document_out(row, memories.document_meta(row.document_id))

    @router.get("", response_model=StoredDocumentPage, summary="List your stored documents, newest first")
    def list_route(tenant_id: TenantDep, memories: MemoriesDep,
                   offset: int = Query(0, ge=0, le=MAX_OFFSET),
                   limit: int = Query(50, ge=1, le=MAX_LIMIT)) -> StoredDocumentPage:
        limit = min(limit, get_settings().limits.page_size_max)
        rows, total = memories.page(tenant_id, offset=offset, limit=limit)
        return StoredDocumentPage(items=[stored_document_out(r, memories.document_meta(r.document_id))
                                         for r in rows], total=total, offset=offset, limit=limit)

    def _row_or_404(memories: MemoryRepository, tenant_id: int, document_id: str):
        row = memories.get(tenant_id, uuid_or_404(document_id, "document"))
        if row is None:
            raise HTTPException(404, "document not found")
        return row

    @router.get("/{document_id}", response_model=StoredDocumentOut, summary="One stored document")
    def get_route(document_id: DocumentId, tenant_id: TenantDep, memories: MemoriesDep) -> StoredDocumentOut:
        row = _row_or_404(memories, tenant_id, document_id)
        return stored_document_out(row, memories.document_meta(row.document_id))

    @router.post("/{document_id}/questions", status_code=202, response_model=JobSubmitted,
                 summary="Ask about a stored document: a job answered from its memory",
                 openapi_extra=_question_body_schema(),
                 description="Answered without reading the document again. On a document still "
                             "being read the job is `waiting` until the read is done, then runs. "
                             "Poll the job's url (GET /v1/jobs/{id}) for the answers.",
                 responses={404: {"description": "no such document"},
                            409: {"description": "the document could not be read, or "
                                                 "Idempotency-Key used with another request"},
                            413: {"description": "body too large"}, 415: {"description": "not JSON"},
                            422: {"description": "invalid questions"},
                            429: {"description": "tenant quota reached (see Retry-After)"}})
    async def question_route(document_id: DocumentId, request: Request, tenant_id: TenantDep,
                             memories: MemoriesDep) -> JobSubmitted:
        settings = get_settings()
        key = idempotency_key({"idempotency_key": request.headers.get("idempotency-key")})
        body = await _question_body(request)
        sha = _keyed_sha(f"{DOCUMENTS_PATH}/{document_id}/questions",
                         hashlib.sha256(body.model_dump_json().encode()).hexdigest()) if key else ""
        return await run_in_threadpool(_ask, memories, tenant_id, document_id, key, sha, body, settings)

    def _ask(memories: MemoryRepository, tenant_id: int, document_id: str, key, sha, body: QuestionRequest,
             settings: Settings) -> JobSubmitted:
        from service.api.submission import _new_job
        from service.core.queue import enqueue_jobs
        from service.jobs import idempotency
        from service.models import Job

        row = _row_or_404(memories, tenant_id, document_id)
        earlier = _replay(memories, tenant_id, key, sha, settings)
        if earlier is not None:
            status = memories.session.get(Job, earlier).status
            return JobSubmitted(id=earlier, status=status, url=f"/v1/jobs/{earlier}")
        if row.status == MemoryStatus.failed.value:
            raise HTTPException(409, f"the document could not be read: {row.error or 'unknown error'}")
        job = _new_job(tenant_id, body.job_options(), text="", content_type="", size=0, filename=None,
                       settings=settings)
        if row.status == MemoryStatus.ready.value:
            _over_quota_or_none(memories.session, tenant_id, settings)
        job_id = memories.question(row, job)
        if key is not None:
            idempotency.remember(memories.session, tenant_id, key, sha, job_id)
        memories.session.commit()
        status = "waiting" if job.waits else "queued"
        if not job.waits:
            enqueue_jobs([job_id])
        return JobSubmitted(id=job_id, status=status, url=f"/v1/jobs/{job_id}")

    @router.delete("/{document_id}", status_code=204, summary="Delete a stored document (text and memory)",
                   responses={404: {"description": "no such document"}})
    def delete_route(document_id: DocumentId, tenant_id: TenantDep, memories: MemoriesDep) -> Response:
        from service.memories.store import memory_store

        key = memories.delete(tenant_id, uuid_or_404(document_id, "document"))
        if key is None:
            raise HTTPException(404, "document not found")
        memories.session.commit()
        if key:
            memory_store().delete(key)
        release_waiting(memories.session, tenant_id)  # cancelled questions freed quota slots
        return Response(status_code=204)

    return router
