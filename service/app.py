"""The LitServe application: POST /v1/jobs is a LitAPI; the other routes join its FastAPI app.

Request path of a submission:
  uvicorn process: X-API-Key -> tenant (cached, on the event loop), body read into a plain dict
  (read_body), put on a pipe-backed queue to the worker (JobServer._init_manager)
  LitServe inference worker: decode_request = validate + extract text, predict = INSERT the
  batch's jobs, COMMIT, then enqueue the Celery tasks by name, job ids only, in one Redis
  pipeline (docs/benchmarks-service.md has the profile behind these choices).
No torch here: the model lives in the Celery GPU workers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp

import litserve as ls
from fastapi import Depends, HTTPException, Request, Security
from litserve.callbacks.base import EventTypes
from litserve.server import RegularRequestHandler
from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import WorkerSetupStatus

from service.auth import api_key_header, require_tenant
from service.schemas import JobSubmitted, JsonJobRequest
from service.settings import get_settings

logger = logging.getLogger(__name__)

JOBS_PATH = "/v1/jobs"


class Refusal(dict):
    """A submission refused in decode_request. Returned, not raised: in a batch, an exception
    would fail every request of the batch. SubmissionHandler turns it into the HTTP error."""

    @classmethod
    def of(cls, exc: HTTPException) -> Refusal:
        return cls(error={"status_code": exc.status_code, "detail": exc.detail})


class SubmitJobAPI(ls.LitAPI):
    def __init__(self, max_batch_size: int = 32):
        from service.batching import GreedyBatchLoop

        super().__init__(api_path=JOBS_PATH, max_batch_size=max_batch_size, batch_timeout=0.0,
                         loop=GreedyBatchLoop())

    def setup(self, device) -> None:
        from service.db import get_engine
        from service.enqueue import celery_app

        self.settings = get_settings()
        get_engine()  # fail at start, not on the first request, if the URL is wrong
        celery_app()

    async def authorize(self, request: Request,
                        x_api_key: str | None = Security(api_key_header)) -> None:
        # LitServe uses this for POST /v1/jobs and its own /info and /health/workers
        await require_tenant(request, x_api_key)

    def decode_request(self, request, **kwargs):
        from service.submission import parse_submission

        try:
            return parse_submission(request, self.settings)
        except HTTPException as exc:
            return Refusal.of(exc)

    def predict(self, specs, **kwargs) -> list[dict]:
        """Store a batch of submissions in one transaction, then enqueue each job."""
        from sqlalchemy.exc import SQLAlchemyError

        from service.db import session_scope
        from service.enqueue import enqueue_jobs
        from service.jobs import insert_jobs
        from service.metrics import ENQUEUE_FAILURES, JOBS_SUBMITTED

        accepted = [spec for spec in specs if not isinstance(spec, Refusal)]
        try:
            with session_scope() as session:
                job_ids = insert_jobs(session, accepted)
        except SQLAlchemyError as exc:
            logger.error("could not store jobs: %s", type(exc).__name__)
            raise HTTPException(503, "the database is unavailable; retry shortly") from None
        # only after the commit: a worker must find the row when the message arrives
        JOBS_SUBMITTED.inc(len(job_ids))
        failed = len(job_ids) - enqueue_jobs(job_ids)
        if failed:
            ENQUEUE_FAILURES.inc(failed)
        ids = iter(job_ids)
        return [spec if isinstance(spec, Refusal) else
                {"id": (job_id := next(ids)), "status": "queued", "url": f"{JOBS_PATH}/{job_id}"}
                for spec in specs]

    def encode_response(self, output, **kwargs):
        return output


class SubmissionHandler(RegularRequestHandler):
    """LitServe's handler, reading the body without ever turning bad input into a 500."""

    async def _prepare_request(self, request, request_type) -> dict:
        from service.submission import read_body

        return await read_body(request, get_settings())

    async def handle_request(self, request, request_type):
        response = await super().handle_request(request, request_type)
        if isinstance(response, dict) and "error" in response:
            raise HTTPException(**response["error"])
        return response


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
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


class JobServer(ls.LitServer):
    """LitServer whose submission route answers 202 and reads bodies with SubmissionHandler."""

    def _init_manager(self, num_api_servers: int):
        # LitServe (0.2.19) passes requests and responses through multiprocessing.Manager
        # queues: every put and get is a round trip to the manager process, and the request
        # put blocks the uvicorn event loop. Plain pipe-backed queues (made before the uvicorn
        # processes fork and handed to the spawned workers) carry the same tuples for less.
        manager = super()._init_manager(num_api_servers)
        ctx = mp.get_context("spawn")
        for lit_api in self.litapi_connector:
            self.litapi_request_queues[lit_api.api_path] = ctx.Queue()
        self._transport = MPQueueTransport(manager, [ctx.Queue() for _ in range(num_api_servers)])
        return manager

    # Replaces LitServer._register_api_endpoints (litserve 0.2.x) for our single, non-streaming,
    # spec-less API; queues, workers and responses are LitServe's own.
    def _register_api_endpoints(self, lit_api, request_type, response_type):
        self._callback_runner.trigger_event(EventTypes.ON_SERVER_START.value, litserver=self)
        handler = SubmissionHandler(lit_api, self)

        async def submit_job(request: Request) -> JobSubmitted:
            return await handler.handle_request(request, Request)

        self.app.add_api_route(
            lit_api.api_path, submit_job, methods=["POST"], status_code=202,
            response_model=JobSubmitted, dependencies=[Depends(self.setup_auth(lit_api))],
            summary="Submit a document (JSON text or multipart file) for a job",
            tags=["jobs"], openapi_extra=_submit_openapi(),
            responses={400: {"description": "unreadable body"}, 401: {"description": "bad key"},
                       413: {"description": "document too large"},
                       415: {"description": "unsupported content type"},
                       422: {"description": "invalid options or document"}},
        )

    def inference_workers_ready(self) -> bool:
        status = getattr(self, "workers_setup_status", None)
        try:
            return bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())
        except Exception:  # the manager is gone: shutting down
            return False


def build_server() -> JobServer:
    from service.metrics import MetricsMiddleware
    from service.routes import job_router, ops_router

    settings = get_settings()
    server = JobServer(
        SubmitJobAPI(max_batch_size=settings.api.max_batch_size),
        accelerator="cpu",
        workers_per_device=settings.api.inference_workers,
        timeout=30,
        healthcheck_path="/health/workers",
        model_metadata={"service": "namm", "submit": JOBS_PATH},
    )
    server.app.title = "NAMM long-document service"
    server.app.include_router(job_router())
    server.app.include_router(ops_router(server.inference_workers_ready))
    server.app.add_middleware(MetricsMiddleware)  # outermost: times everything
    return server
