"""Routes added to LitServe's FastAPI app next to POST /v1/jobs: read, list and cancel jobs,
health and metrics. Job routes use the same X-API-Key dependency as the submission route."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.auth import require_operator, require_tenant
from service.jobs import cancel_job, document_summary, get_job, job_out, job_summary, list_jobs
from service.metrics import render_metrics
from service.schemas import JobOut, JobPage
from service.settings import get_settings

logger = logging.getLogger(__name__)

StatusFilter = Literal["queued", "running", "done", "failed", "cancelled"]


def _db_unavailable(exc: Exception) -> HTTPException:
    logger.error("database error: %s", type(exc).__name__)
    return HTTPException(503, "the database is unavailable; retry shortly")


def job_router() -> APIRouter:
    from service.db import session_factory

    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.get("", response_model=JobPage, summary="List your jobs, newest first")
    def list_route(
        tenant_id: int = Depends(require_tenant),
        status: StatusFilter | None = Query(None, description="only jobs in this status"),
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1),
    ) -> JobPage:
        limit = min(limit, get_settings().limits.page_size_max)
        try:
            with session_factory()() as session:
                jobs, total = list_jobs(session, tenant_id, status=status, offset=offset, limit=limit)
                return JobPage(items=[job_summary(j) for j in jobs], total=total, offset=offset,
                               limit=limit)
        except SQLAlchemyError as exc:
            raise _db_unavailable(exc) from None

    @router.get("/{job_id}", response_model=JobOut,
                summary="Status, progress, result and usage of one job")
    def get_route(job_id: str, tenant_id: int = Depends(require_tenant)) -> JobOut:
        try:
            with session_factory()() as session:
                job = get_job(session, tenant_id, job_id)
                if job is None:  # other tenants' jobs look exactly like missing ones
                    raise HTTPException(404, "job not found")
                return job_out(job, document_summary(session, job.document_id))
        except SQLAlchemyError as exc:
            raise _db_unavailable(exc) from None

    @router.post("/{job_id}/cancel", response_model=JobOut,
                 summary="Cancel a queued or running job (finished jobs are unchanged)")
    def cancel_route(job_id: str, tenant_id: int = Depends(require_tenant)) -> JobOut:
        try:
            with session_factory()() as session:
                job = cancel_job(session, tenant_id, job_id)
                session.commit()
                if job is None:
                    raise HTTPException(404, "job not found")
                return job_out(job, document_summary(session, job.document_id))
        except SQLAlchemyError as exc:
            raise _db_unavailable(exc) from None

    return router


def ops_router(workers_ready: Callable[[], bool]) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Database, broker and API workers reachable")
    def health() -> JSONResponse:
        from service.db import get_engine
        from service.enqueue import broker_reachable

        checks = {"database": False, "broker": False, "api_workers": False}
        try:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception as exc:
            logger.warning("health: database unreachable (%s)", type(exc).__name__)
        checks["broker"] = broker_reachable()
        checks["api_workers"] = workers_ready()
        healthy = all(checks.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "checks": checks},
                            status_code=200 if healthy else 503)

    @router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_operator)])
    def metrics() -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    return router
