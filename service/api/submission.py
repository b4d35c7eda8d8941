"""From the raw body of POST /v1/jobs to a validated JobSpec.

Two stages, because LitServe splits a request across processes:
- read_body (API process, async): read JSON bytes or the multipart form into a plain,
  picklable dict; refuse wrong content types and oversize bodies early;
- parse_submission (LitServe inference worker): validate options, extract the document text
  (HTML via bs4, PDF via pypdf), apply defaults and limits. Policy names and budgets are
  validated by namm.spec (through the schema's field types); the budget a job runs with is
  resolved here and stored with its unit.
Every refusal is an HTTPException with a 4xx status and a message saying what to fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from namm.spec import NON_EVICTING_POLICIES, Budget, default_budget, no_trained_scorer_message, shipped_scorer_trained
from service.api.documents import DocumentError, extract_text, html_to_text
from service.api.schemas import JobOptions, JsonJobRequest, validation_message
from service.api.text_checks import check_text, check_tree
from service.core.settings import Settings
from service.jobs.repository import NewJob

FORM_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries, option fields, JSON escaping
OPTION_FIELDS = set(JobOptions.model_fields)
LIST_FIELDS = {"questions"}


def _body_limit(settings: Settings) -> int:
    # JSON escaping can double a text's size; never accept more than that
    limits = settings.limits
    return 2 * (limits.max_document_bytes + limits.max_options_bytes) + FORM_OVERHEAD_BYTES


async def read_body(request: Request, settings: Settings) -> dict[str, Any]:
    # the auth dependency (service/api/auth.py require_submitter) ran first: it left the tenant,
    # or the key's sha256 for the inference worker to check in its batch
    tenant_id = getattr(request.state, "tenant_id", None)
    key_sha256 = getattr(request.state, "key_sha256", None)
    if tenant_id is None and key_sha256 is None:  # a wiring error, never a client's
        raise HTTPException(401, "missing X-API-Key header")
    submitter = {"tenant_id": tenant_id} if tenant_id is not None else {"key_sha256": key_sha256}
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > _body_limit(settings):
        raise HTTPException(413, f"request body too large; documents are limited to "
                                 f"{settings.limits.max_document_bytes} bytes")
    # the Idempotency-Key is checked with the rest in the inference worker (service/api/intake.py)
    key = request.headers.get("idempotency-key")
    if media_type == "application/json":
        return {**submitter, "format": "json", "idempotency_key": key,
                "body": await _read_limited(request, _body_limit(settings))}
    if media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=200,
                                      max_part_size=settings.limits.max_document_bytes + 1)
        except StarletteHTTPException as exc:
            raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
        except Exception as exc:  # python-multipart raises plain errors on garbage
            raise HTTPException(400, f"malformed multipart body ({type(exc).__name__})") from None
        fields: dict[str, list[str]] = {}
        upload = None
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name != "file":
                        raise HTTPException(422, f"unexpected file field {name!r}; send the "
                                                 "document as the field 'file'")
                    data = await value.read()
                    upload = {"filename": value.filename, "content_type": value.content_type,
                              "data": data}
                else:
                    fields.setdefault(name, []).append(value)
        finally:
            await form.close()
        return {**submitter, "format": "multipart", "idempotency_key": key,
                "fields": fields, "file": upload}
    if not media_type:
        raise HTTPException(415, "missing Content-Type: send application/json or "
                                 "multipart/form-data")
    raise HTTPException(415, f"unsupported Content-Type {media_type!r}: send application/json "
                             "(document as text) or multipart/form-data (document as file)")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing it as soon as it exceeds `limit` (chunked uploads have no length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _form_options(fields: dict[str, list[str]], allowed: set[str] = OPTION_FIELDS) -> dict[str, Any]:
    unknown = sorted(set(fields) - allowed - {"document", "document_format", "filename"})
    if unknown:
        raise HTTPException(422, f"unknown form field(s): {', '.join(unknown)}")
    options: dict[str, Any] = {}
    for name, values in fields.items():
        if name in LIST_FIELDS:
            items: list[str] = []
            for value in values:
                stripped = value.strip()
                if stripped.startswith("["):  # questions may come as one JSON list
                    try:
                        decoded = json.loads(stripped)
                    except json.JSONDecodeError:
                        raise HTTPException(422, f"{name}: not a valid JSON list") from None
                    if not isinstance(decoded, list):
                        raise HTTPException(422, f"{name}: expected a list")
                    # the JSON's escapes may spell NUL or a lone surrogate the raw field
                    # did not hold: the same 422 as a JSON body's (questions[i], offset)
                    check_tree(decoded, name)
                    items.extend(str(v) for v in decoded)
                else:
                    items.append(value)
            options[name] = items
        else:
            if len(values) > 1:
                raise HTTPException(422, f"{name}: given {len(values)} times")
            if name == "budget":  # a JSON object's escapes may spell NUL: named as for JSON bodies
                try:
                    check_tree(json.loads(values[0]), name)
                except ValueError:
                    pass  # not JSON: the schema's validator says what is wrong
            options[name] = values[0] if values[0] != "" else None
    return options


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, validation_message(exc)) from None


def parse_submission(payload: dict[str, Any], settings: Settings) -> NewJob:
    options, text, content_type, size, filename = parse_document(payload, settings, JsonJobRequest, JobOptions)
    return _new_job(payload["tenant_id"], options, text=text, content_type=content_type,
                    size=size, filename=filename, settings=settings)


def parse_document(payload: dict[str, Any], settings: Settings, json_model: type[BaseModel],
                   form_model: type[BaseModel]) -> tuple[Any, str, str, int, str | None]:
    """A document and its options from a body read by `read_body`: (options, text, content
    type, size in bytes, file name). `json_model` validates a JSON body (the document in it),
    `form_model` a form's option fields (the document as the 'file' part)."""
    limits = settings.limits
    if payload["format"] == "json":
        body: bytes = payload["body"]
        if not body.strip():
            raise HTTPException(400, "empty request body: send a JSON object with a 'document'")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(400, f"the body is not valid JSON ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise HTTPException(422, "the body must be a JSON object")
        check_tree(data)  # NUL and lone surrogates, before anything quotes or stores them
        request = _validate(json_model, data)
        raw = request.document.encode("utf-8")
        if len(raw) > limits.max_document_bytes:
            raise HTTPException(413, f"the document is {len(raw)} bytes; the limit is "
                                     f"{limits.max_document_bytes}")
        text = html_to_text(request.document) if request.document_format == "html" else request.document
        if not text.strip():
            raise HTTPException(422, "the document is empty")
        content_type = {"text": "text/plain", "markdown": "text/markdown",
                        "html": "text/html"}[request.document_format]
        options = request
        filename, size = request.filename, len(raw)
    else:
        fields = dict(payload["fields"])
        upload = payload.get("file")
        for name, values in fields.items():
            check_text("a form field name", name)
            for value in values:
                check_text(name, value)
        if upload is not None and upload["filename"]:
            check_text("filename", upload["filename"])
        form = _form_options(fields, set(form_model.model_fields))
        inline = form.pop("document", None)
        fmt_field = form.pop("document_format", None)
        filename = form.pop("filename", None)
        options = _validate(form_model, form)
        if upload is not None and inline is not None:
            raise HTTPException(422, "send the document either as 'file' or as 'document', not both")
        if upload is None and inline is None:
            raise HTTPException(422, "no document: add a 'file' part (or a 'document' text field)")
        if upload is not None:
            data, declared = upload["data"], upload["content_type"]
            filename = filename or upload["filename"]
        else:
            data = inline.encode("utf-8")
            declared = {"html": "text/html", "markdown": "text/markdown"}.get(fmt_field or "", "text/plain")
        try:
            doc = extract_text(data, declared, filename, max_bytes=limits.max_document_bytes,
                               pdf_timeout_s=limits.pdf_timeout_s,
                               pdf_memory_mb=limits.pdf_memory_mb)
        except DocumentError as exc:
            raise HTTPException(exc.status_code, exc.message) from None
        text, content_type, size = doc.text, doc.content_type, len(data)
    return options, text, content_type, size, filename


def _check_option_sizes(options: JobOptions, filename: str | None, limits) -> None:
    """Limits over the rest of the request: each question, the file name, and all of it."""
    for i, question in enumerate(options.questions):
        if len(question) > limits.max_question_chars:
            raise HTTPException(422, f"questions[{i}]: {len(question)} characters; a question is "
                                     f"limited to {limits.max_question_chars}")
    if filename and len(filename) > limits.max_filename_chars:
        raise HTTPException(422, f"filename: {len(filename)} characters; the limit is "
                                 f"{limits.max_filename_chars}")
    total = sum(len(q.encode("utf-8")) for q in options.questions)
    total += len((options.instruction or "").encode("utf-8")) + len((filename or "").encode("utf-8"))
    if total > limits.max_options_bytes:
        raise HTTPException(413, f"questions, instruction and file name are {total} bytes "
                                 f"together; the limit is {limits.max_options_bytes}")


def _model_name(settings: Settings) -> str | None:
    path = settings.model.path
    return Path(path).name if path else None


def check_policy_available(policy: str, settings: Settings) -> None:
    """422 for policy `namm` where the checkpoint the workers would load has no evolved scorer
    (all zero): that is not a learned attention memory, and the shipped one is `surprisal`.
    Read from the file without torch, as the budget is."""
    if policy == "namm" and not shipped_scorer_trained(_model_name(settings)):
        raise HTTPException(422, f"policy: {no_trained_scorer_message(_model_name(settings))}")


def default_budget_for(policy: str, settings: Settings) -> Budget | None:
    """The budget of a job that names none: the operator's default if set, else the policy's
    own (surprisal and namm: the budget of the checkpoint the workers load, read from the file)."""
    if policy in NON_EVICTING_POLICIES:
        return None
    if settings.defaults.budget is not None:
        return settings.defaults.budget
    return default_budget(policy, model_name=_model_name(settings))


def _new_job(tenant_id: int, options: JobOptions, *, text: str, content_type: str, size: int,
             filename: str | None, settings: Settings) -> NewJob:
    limits, defaults = settings.limits, settings.defaults
    kind = options.kind or ("answer" if options.questions else "summarize")
    if kind == "answer" and not options.questions:
        raise HTTPException(422, "kind 'answer' needs at least one question in 'questions'")
    if kind == "extract" and not (options.instruction and options.instruction.strip()):
        raise HTTPException(422, "kind 'extract' needs an 'instruction' saying what to extract")
    if kind == "summarize" and options.questions:
        raise HTTPException(422, "kind 'summarize' takes no questions; use kind 'answer'")
    if len(options.questions) > limits.max_questions:
        raise HTTPException(422, f"at most {limits.max_questions} questions per job")
    if options.instruction and len(options.instruction) > limits.max_instruction_chars:
        raise HTTPException(422, f"the instruction is limited to {limits.max_instruction_chars} "
                                 "characters")
    _check_option_sizes(options, filename, limits)
    max_new_tokens = options.max_new_tokens or defaults.max_new_tokens
    if max_new_tokens > limits.max_new_tokens:
        raise HTTPException(422, f"max_new_tokens is limited to {limits.max_new_tokens}")
    policy = options.policy or defaults.policy
    check_policy_available(policy, settings)
    budget = options.budget
    if budget is None:  # not given, or null: the default, resolved now and stored with the job
        budget = default_budget_for(policy, settings)
    elif policy in NON_EVICTING_POLICIES:
        budget = None  # the full cache keeps everything whatever the budget says
    return NewJob(
        tenant_id=tenant_id, text=text, content_type=content_type, size_bytes=size,
        filename=filename or None, kind=kind,
        instruction=options.instruction, questions=options.questions, policy=policy,
        budget=budget, max_new_tokens=max_new_tokens,
        truncate=options.truncate, max_attempts=settings.worker.max_attempts,
        retention=options.retention,
    )
