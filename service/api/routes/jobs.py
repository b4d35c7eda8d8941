"""Read, list and cancel jobs (submission is the LitAPI in service/api/app.py). Every route
takes the tenant of its X-API-Key and one session; other tenants' jobs look like missing ones."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi import Query
from sqlalchemy import select

from service.api.deps import JobsDep, TenantDep
from service.api.schemas import JobOut, JobPage, RetentionOut, job_out, job_summary
from service.core.settings import get_settings
from service.repos.repository import BatchRepository

StatusFilter = Literal["waiting", "queued", "running", "done", "failed", "cancelled"]
# every parameter is bounded (issue 13): a 23-digit offset was a 500 (SQLite) / 503 (PostgreSQL)
MAX_OFFSET = 10_000_000
MAX_LIMIT = 10_000  # accepted, then cut to limits.page_size_max
JobId = Annotated[str, PathParam(max_length=64, description="the job's id (a UUID)")]


def release_waiting(session, tenant_id: int) -> None:
    """Queue what fits of the tenant's waiting jobs (service/jobs/admission.py), sent after the
    commit; a failed send is resent by the sweep."""
    from service.core.queue import enqueue_jobs
    from service.jobs import admission

    job_ids = admission.release(session, tenant_id, get_settings().quotas)
    session.commit()
    if job_ids:
        enqueue_jobs(job_ids)


def uuid_or_404(ident: str, what: str = "job") -> str:
    """Ids are UUIDs; anything else (a NUL, a path) is no such thing, answered without a query."""
    try:
        if str(uuid.UUID(ident)) == ident.lower():
            return ident.lower()
    except ValueError:
        pass
    raise HTTPException(404, f"{what} not found")


def job_id_or_404(job_id: str) -> str:
    return uuid_or_404(job_id, "job")


def batch_id_or_404(batch_id: str, tenant_id: int, session) -> str:
    """A batch of this tenant, or 404 as for any other tenant's id."""
    batch_id = uuid_or_404(batch_id, "batch")
    if BatchRepository(session).get(tenant_id, batch_id) is None:
        raise HTTPException(404, "batch not found")
    return batch_id


def job_router() -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.get("", response_model=JobPage, summary="List your jobs, newest first")
    def list_route(
        tenant_id: TenantDep,
        jobs: JobsDep,
        status: StatusFilter | None = Query(None, description="only jobs in this status"),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(50, ge=1, le=MAX_LIMIT),
        batch: str | None = Query(
            None, max_length=64,
            description="default: the jobs you submitted yourself (a repository batch's file "
                        "jobs would bury them); 'any': every job; a batch id: that batch's jobs"),
    ) -> JobPage:
        limit = min(limit, get_settings().limits.page_size_max)
        if batch is not None and batch != "any":
            batch = batch_id_or_404(batch, tenant_id, jobs.session)
        rows, total = jobs.page(tenant_id, status=status, offset=offset, limit=limit, batch=batch)
        return JobPage(items=[job_summary(j) for j in rows], total=total, offset=offset,
                       limit=limit)

    @router.get("/{job_id}", response_model=JobOut,
                summary="Status, progress, result and usage of one job")
    def get_route(job_id: JobId, tenant_id: TenantDep, jobs: JobsDep) -> JobOut:
        job = jobs.get(tenant_id, job_id_or_404(job_id))
        if job is None:
            raise HTTPException(404, "job not found")
        return job_out(job, jobs.document_info(job.document_id))

    @router.post("/{job_id}/cancel", response_model=JobOut,
                 summary="Cancel a queued or running job (finished jobs are unchanged)")
    def cancel_route(job_id: JobId, tenant_id: TenantDep, jobs: JobsDep) -> JobOut:
        before = jobs.get(tenant_id, job_id_or_404(job_id))
        was_queued = before is not None and before.status == "queued"
        job = jobs.cancel(tenant_id, job_id_or_404(job_id))
        jobs.session.commit()
        if job is None:
            raise HTTPException(404, "job not found")
        if job.kind == "read":  # a stored document's read: it failed, its questions fail
            from service.memories.repository import MemoryRepository

            MemoryRepository(jobs.session).settle_reads()
            jobs.session.commit()
        if was_queued or job.kind == "read":  # a quota slot is free (a running job frees it when it stops)
            release_waiting(jobs.session, tenant_id)
        return job_out(job, jobs.document_info(job.document_id))

    @router.get("/{job_id}/retention", response_model=RetentionOut,
                summary="What the memory kept of the document",
                description="For a job submitted with `retention: true`, once done: the "
                            "document as token pieces, each with the share (0..1) of layers and "
                            "KV heads whose memory still held it when the questions were asked.",
                responses={404: {"description": "no such job"},
                           409: {"description": "the job has no retention map (not asked for, "
                                                "not done yet, or its document was cut)"}})
    def retention_route(job_id: JobId, tenant_id: TenantDep, jobs: JobsDep) -> RetentionOut:
        from service.models import Result

        job = jobs.get(tenant_id, job_id_or_404(job_id))
        if job is None:
            raise HTTPException(404, "job not found")
        pieces = jobs.session.scalar(select(Result.retention).where(Result.job_id == job.id))
        if pieces is None:  # the job exists: a 404 would read as "no such job"
            if not job.retention:
                why = "it was not submitted with retention: true"
            elif job.status != "done":
                why = f"it is {job.status}; the map is kept once the job is done"
            else:
                why = "its document was cut to the model's context, so no map matches it"
            raise HTTPException(409, f"no retention map for this job: {why}")
        shares = [share for _, share in pieces]
        return RetentionOut(job=job.id, policy=job.policy, budget=job.budget, tokens=len(pieces),
                            mean_share=sum(shares) / len(shares) if shares else 1.0, pieces=pieces)

    return router
