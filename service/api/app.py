"""The LitServe application: POST /v1/jobs is a LitAPI; the other routes join its FastAPI app.

Request path of a submission:
  uvicorn process: X-API-Key present and not known to be bad (auth.require_submitter; no
  database for a small body), body read into a plain dict (submission.read_body), put on a
  pipe-backed queue to the inference worker
  LitServe inference worker, per batch (intake.admit): the keys checked (one query), then each
  submission validated + its text extracted, the batch's jobs INSERTed, COMMIT, then the Celery
  tasks enqueued by name, job ids only, in one Redis pipeline (docs/benchmarks-service.md has
  the profile behind these choices).
No torch here: the model lives in the Celery GPU workers. LitServe's private methods are
overridden only in service/api/litserve.py.
"""

from __future__ import annotations

import logging

import litserve as ls
from fastapi import HTTPException, Request, Security

from namm.spec import DEFAULT_POLICY
from service.api.auth import (api_key_header, confirm_submitter, remember_unknown_key,
                              require_submitter, require_tenant)
from service.api.intake import Refusal  # noqa: F401  (re-exported: the refusal type of this API)
from service.api.litserve import GreedyBatchLoop, JobServer, RouteSpec
from service.api.schemas import JobSubmitted, JsonJobRequest
from service.core.settings import get_settings

logger = logging.getLogger(__name__)

JOBS_PATH = "/v1/jobs"


class SubmitJobAPI(ls.LitAPI):
    def __init__(self, max_batch_size: int = 32):
        super().__init__(api_path=JOBS_PATH, max_batch_size=max_batch_size, batch_timeout=0.0,
                         loop=GreedyBatchLoop())

    def setup(self, device) -> None:
        from service.api.submission import default_budget_for
        from service.core.db import get_engine
        from service.core.queue import celery_app

        self.settings = get_settings()
        get_engine()  # fail at start, not on the first request, if the URL is wrong
        celery_app()
        default_budget_for(DEFAULT_POLICY, self.settings)  # the shipped checkpoint must be readable

    async def authorize(self, request: Request,
                        x_api_key: str | None = Security(api_key_header)) -> None:
        # LitServe uses this for POST /v1/jobs and its own /info and /health/workers
        await require_tenant(request, x_api_key)

    def decode_request(self, request, **kwargs):
        return request  # validated in predict, once its key is known (intake.admit)

    def predict(self, payloads, **kwargs) -> list[dict]:
        """Authenticate, validate and store a batch of submissions, each item answered on its
        own (service/api/intake.py), then enqueue the new jobs."""
        from service.api.intake import admit

        return admit(payloads, self.settings)

    def encode_response(self, output, **kwargs):
        return output


def _submit_openapi() -> dict:
    json_schema = JsonJobRequest.model_json_schema()
    form_schema = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "text, Markdown, HTML or PDF"},
            **{name: field for name, field in json_schema["properties"].items()
               if name not in ("document", "document_format", "filename")},
        },
    }
    form_schema["properties"]["budget"] = {
        "type": "string", "description": 'a fraction ("0.3") or a JSON budget object '
        '(\'{"tokens": 2048}\'); see the JSON body\'s budget'}
    return {
        "parameters": [{
            "name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            "description": "retries with the same key and body answer the first job (for "
                           "24 h); the same key with another body is a 409"}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


async def _read_body(request: Request) -> dict:
    from service.api.submission import read_body

    try:
        return await read_body(request, get_settings())
    except HTTPException:
        await confirm_submitter(request)  # an unknown key hears 401, not a verdict on its body
        raise


def _refused(request: Request, status_code: int) -> None:
    if status_code == 401:  # the inference worker did not know the key
        remember_unknown_key(request)


def build_server() -> JobServer:
    from service.api.errors import install_error_handlers
    from service.api.metrics import MetricsMiddleware
    from service.api.routes.jobs import job_router
    from service.api.routes.ops import ops_router

    settings = get_settings()
    server = JobServer(
        SubmitJobAPI(max_batch_size=settings.api.max_batch_size),
        route=RouteSpec(
            read_body=_read_body, authorize=require_submitter, refused=_refused,
            response_model=JobSubmitted, status_code=202,
            summary="Submit a document (JSON text or multipart file) for a job", tags=["jobs"],
            openapi_extra=_submit_openapi(),
            responses={400: {"description": "unreadable body"}, 401: {"description": "bad key"},
                       413: {"description": "document too large"},
                       415: {"description": "unsupported content type"},
                       409: {"description": "Idempotency-Key used with another request"},
                       422: {"description": "invalid options or document"},
                       429: {"description": "tenant quota reached (see Retry-After)"},
                       503: {"description": "database unavailable; retry"}}),
        accelerator="cpu",
        workers_per_device=settings.api.inference_workers,
        timeout=30,
        healthcheck_path="/health/workers",
        model_metadata={"service": "namm", "submit": JOBS_PATH},
        drain_notice_s=settings.api.drain_notice_s,
    )
    server.app.title = "NAMM long-document service"
    server.app.include_router(job_router())
    server.app.include_router(ops_router(server.inference_workers_ready))
    from service.api.routes.admin import admin_router

    server.app.include_router(admin_router())  # tenants, keys, quotas (admin keys only)
    from service.api.routes.batches import batch_router
    from service.api.routes.schedules import schedule_router

    server.app.include_router(batch_router())  # repository batches (service/repos)
    from service.api.routes.documents import document_router

    server.app.include_router(document_router())  # stored documents (service/memories)
    server.app.include_router(schedule_router())
    from service.api.routes.dashboard import install_dashboard
    from service.api.routes.reports import report_router

    server.app.include_router(report_router())  # cost reports (service/reports)
    install_dashboard(server.app)  # /dashboard and its static files
    install_error_handlers(server.app)
    from service.api.docs_ui import install_docs

    install_docs(server.app)  # /docs with local assets, no CDN
    from service.api.drain import DrainMiddleware

    server.app.add_middleware(DrainMiddleware)  # on SIGTERM: 503 + Connection: close
    server.app.add_middleware(MetricsMiddleware)  # outermost: times everything
    return server
