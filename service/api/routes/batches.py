"""Repository batches: submit (JSON with a path or git source, or multipart with an archive),
list, read, report (Markdown or JSON) and cancel. Tenant-scoped like jobs: another tenant's
batch looks like a missing one.

A hostile or broken archive is refused here, with a 4xx, before anything is stored: the upload
is unpacked once into a temporary directory by the same checks ingestion uses
(service/repos/sources.py), then thrown away; the worker unpacks it again on queue `cpu`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.batch_schemas import (
    BatchOptions,
    BatchOut,
    BatchPage,
    BatchSubmitted,
    JsonBatchRequest,
    batch_out,
    batch_summary,
    report_markdown,
)
from service.api.deps import SessionDep, TenantDep
from service.api.schemas import validation_message
from service.api.text_checks import check_text, check_tree
from service.core.settings import Settings, get_settings
from service.repos.repository import BatchRepository, NewBatch
from service.repos.git_source import GitAccess, check_git_source
from service.repos.sources import Limits, SourceError, extract_archive, resolve_server_path

BATCHES_PATH = "/v1/batches"
JSON_BODY_LIMIT = 64 * 1024
StatusFilter = Literal["queued", "running", "aggregating", "done", "failed", "cancelled"]


def get_batches(session: SessionDep) -> BatchRepository:
    return BatchRepository(session)


BatchesDep = Annotated[BatchRepository, Depends(get_batches)]


def check_source(source: dict[str, Any], settings: Settings) -> None:
    """A path or git source the workers may read; HTTP 422 with the reason otherwise. An https
    host is resolved here (blocking: call from a worker thread) and must be public or
    allow-listed; the clone checks it again when it runs."""
    roots = settings.batches.allowed_roots
    try:
        if source["kind"] == "path":
            resolve_server_path(source["path"], roots)
        elif source["kind"] == "git":
            check_git_source(source["url"], GitAccess.of(settings.batches), source.get("ref"))
    except SourceError as exc:
        raise HTTPException(422, f"source: {exc}") from None


def resolve_options(options: BatchOptions, settings: Settings) -> dict[str, Any]:
    from service.api.submission import check_policy_available, default_budget_for

    policy = options.policy or settings.defaults.policy
    check_policy_available(policy, settings)
    budget = options.budget if options.budget is not None else default_budget_for(policy, settings)
    max_new = options.max_new_tokens or settings.defaults.max_new_tokens
    if max_new > settings.limits.max_new_tokens:
        raise HTTPException(422, f"max_new_tokens is limited to {settings.limits.max_new_tokens}")
    if len(options.questions) > settings.limits.max_questions:
        raise HTTPException(422, f"at most {settings.limits.max_questions} questions per batch")
    return {"policy": policy, "budget": None if policy == "full" else budget,
            "max_new_tokens": max_new, "tasks": list(options.tasks),
            "questions": list(options.questions)}


def check_archive(data: bytes, filename: str, settings: Settings) -> None:
    with tempfile.TemporaryDirectory(prefix="namm-upload-check-") as tmp:
        try:
            extract_archive(data, filename, Path(tmp) / "x", Limits.of(settings.batches))
        except SourceError as exc:
            raise HTTPException(422, f"archive: {exc}") from None


async def _read_json(request: Request) -> JsonBatchRequest:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > JSON_BODY_LIMIT:
            raise HTTPException(413, f"a JSON batch request is limited to {JSON_BODY_LIMIT} bytes; "
                                     "send an archive as multipart/form-data")
    try:
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None  # the schema's validation below says what is wrong
        check_tree(decoded)  # NUL and lone surrogates: the same 422 as POST /v1/jobs
        return JsonBatchRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise HTTPException(422, validation_message(exc)) from None
    except RecursionError:  # thousands of nested [ or {: as on POST /v1/jobs
        raise HTTPException(400, "the JSON body nests too deeply") from None


async def _read_multipart(request: Request, settings: Settings) -> tuple[BatchOptions, str, bytes]:
    cap = settings.batches.max_archive_bytes
    try:
        form = await request.form(max_files=1, max_fields=20, max_part_size=64 * 1024)
    except StarletteHTTPException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
    except Exception as exc:  # python-multipart raises plain errors on garbage
        raise HTTPException(400, f"malformed multipart body ({type(exc).__name__})") from None
    fields: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    try:
        for name, value in form.multi_items():
            check_text("a form field name", name)
            if isinstance(value, UploadFile):
                if value.filename:
                    check_text("filename", value.filename)
                if name != "file":
                    raise HTTPException(422, f"unexpected file field {name!r}; send the archive "
                                             "as the field 'file'")
                data = await value.read(cap + 1)
                if len(data) > cap:
                    raise HTTPException(413, f"the archive is larger than {cap} bytes")
                upload = (value.filename or "upload", data)
            elif name == "questions":
                check_text(f"questions[{len(fields.get('questions', []))}]", value)
                fields.setdefault("questions", []).append(value)
            elif name == "tasks":
                check_text(name, value)
                fields.setdefault("tasks", []).extend(t.strip() for t in value.split(",")
                                                      if t.strip())
            elif name == "budget":
                check_text(name, value)
                fields["budget"] = _form_budget(value)
                check_tree(fields["budget"], name)  # its JSON escapes may spell NUL too
            else:
                check_text(name, value)
                fields[name] = value
    finally:
        await form.close()
    if upload is None:
        raise HTTPException(422, "send the repository archive (.tar.gz or .zip) as the field "
                                 "'file', or a JSON body with a path or git source")
    try:
        options = BatchOptions.model_validate(fields)
    except ValidationError as exc:
        raise HTTPException(422, validation_message(exc)) from None
    return options, upload[0], upload[1]


def refuse_over_quota(session: Session, tenant_id: int, settings: Settings) -> None:
    """429 with Retry-After when the tenant is already at its active-jobs or daily-token quota
    (the same gate as POST /v1/jobs): a batch's file jobs count like any other job."""
    from service.jobs.quotas import QuotaGate

    over = QuotaGate(lambda: nullcontext(session), settings.quotas).admit(tenant_id)
    if over is not None:
        raise HTTPException(429, f"batch refused: {over.message}",
                            headers={"Retry-After": str(over.retry_after_s)})


def _form_budget(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value  # the schema's validator says what is wrong


def batch_router() -> APIRouter:
    router = APIRouter(prefix=BATCHES_PATH, tags=["batches"])

    @router.post(
        "", status_code=202, response_model=BatchSubmitted,
        summary="Submit a repository: JSON with a path or git source, or multipart with an "
                "archive (.tar.gz, .zip) in the field 'file'",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": JsonBatchRequest.model_json_schema()},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary",
                                        "description": ".tar.gz or .zip of the repository"},
                               "tasks": {"type": "string", "description": "comma-separated"},
                               "questions": {"type": "array", "items": {"type": "string"},
                                             "description": "repeat the field per question"},
                               "policy": {"type": "string"},
                               "budget": {"type": "string", "description": 'e.g. 0.25 or '
                                          '{"tokens": 2048}'},
                               "max_new_tokens": {"type": "integer"}}}}}}},
        responses={400: {"description": "unreadable body"}, 413: {"description": "too large"},
                   415: {"description": "unsupported content type"},
                   429: {"description": "the tenant is at its active-jobs or daily-token quota "
                                        "(Retry-After)"},
                   422: {"description": "refused source or archive, or invalid options"}})
    async def submit_route(request: Request, tenant_id: TenantDep,
                           batches: BatchesDep) -> BatchSubmitted:
        settings = get_settings()
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.batches.max_archive_bytes + 1_000_000:
            raise HTTPException(413, f"the archive is larger than "
                                     f"{settings.batches.max_archive_bytes} bytes")
        upload = None
        if media == "application/json":
            body = await _read_json(request)
            options: BatchOptions = body
            source = body.source.model_dump(exclude_none=True)
            await run_in_threadpool(check_source, source, settings)
        elif media == "multipart/form-data":
            options, filename, data = await _read_multipart(request, settings)
            await run_in_threadpool(check_archive, data, filename, settings)
            source = {"kind": "archive", "filename": filename[:500], "bytes": len(data)}
            upload = (filename, data)
        else:
            raise HTTPException(415, "send application/json (a path or git source) or "
                                     "multipart/form-data (an archive in the field 'file')")
        resolved = resolve_options(options, settings)
        await run_in_threadpool(refuse_over_quota, batches.session, tenant_id, settings)

        def store() -> str:
            batch = batches.create(NewBatch(tenant_id=tenant_id, source=source, upload=upload,
                                            **resolved))
            batches.session.commit()
            return batch.id

        batch_id = await run_in_threadpool(store)
        from service.repos.queue import enqueue_ingest

        await run_in_threadpool(enqueue_ingest, batch_id)  # after the commit
        return BatchSubmitted(id=batch_id, status="queued", url=f"{BATCHES_PATH}/{batch_id}")

    @router.get("", response_model=BatchPage, summary="List your batches, newest first")
    def list_route(tenant_id: TenantDep, batches: BatchesDep,
                   status: StatusFilter | None = Query(None),
                   offset: int = Query(0, ge=0, le=1_000_000),
                   limit: int = Query(50, ge=1, le=1000)) -> BatchPage:
        limit = min(limit, get_settings().limits.page_size_max)
        rows, total = batches.page(tenant_id, status=status, offset=offset, limit=limit)
        return BatchPage(items=[batch_summary(b) for b in rows], total=total, offset=offset,
                         limit=limit)

    def load(tenant_id: int, batch_id: str, batches: BatchRepository) -> BatchOut:
        from service.jobs.admission import waiting_reason

        batch = batches.get(tenant_id, batch_id)
        if batch is None:
            raise HTTPException(404, "batch not found")
        waiting = batches.waiting_jobs(batch_id)
        reason = waiting_reason(batches.session, tenant_id, get_settings().quotas) \
            if waiting else None
        return batch_out(batch, batches.files(batch_id), batches.skipped(batch_id),
                         batches.usage_totals(batch_id), batches.answers(batch),
                         waiting=waiting, waiting_reason=reason, memory_id=batches.memory_id(batch_id))

    @router.get("/{batch_id}", response_model=BatchOut,
                summary="Status, progress, per-file results, skipped files and usage of a batch")
    def get_route(batch_id: str, tenant_id: TenantDep, batches: BatchesDep) -> BatchOut:
        return load(tenant_id, batch_id, batches)

    @router.get("/{batch_id}/report", summary="The batch's report as Markdown or JSON",
                responses={200: {"content": {"text/markdown": {}, "application/json": {}}}})
    def report_route(batch_id: str, tenant_id: TenantDep, batches: BatchesDep,
                     format: Literal["md", "json"] = Query("md")):
        out = load(tenant_id, batch_id, batches)
        disposition = {"Content-Disposition":
                       f'attachment; filename="batch-{batch_id}.{format}"'}
        if format == "json":
            return JSONResponse(out.model_dump(mode="json"), headers=disposition)
        return PlainTextResponse(report_markdown(out), media_type="text/markdown",
                                 headers=disposition)

    @router.post("/{batch_id}/cancel", response_model=BatchOut,
                 summary="Cancel a batch: its unfinished files and jobs stop; finished ones stay")
    def cancel_route(batch_id: str, tenant_id: TenantDep, batches: BatchesDep) -> BatchOut:
        batch = batches.cancel(tenant_id, batch_id)
        batches.session.commit()
        if batch is None:
            raise HTTPException(404, "batch not found")
        return load(tenant_id, batch_id, batches)

    return router
