"""Sending the waiting jobs a tenant's quota has room for again (service/jobs/admission.py):
after each job ends (the `namm.run_job` task), and from the sweep, which catches a release a
crash missed and the daily token quota's reset at midnight UTC."""

from __future__ import annotations

import logging

from sqlalchemy import select

from service.core.db import session_scope
from service.core.queue import enqueue_jobs
from service.core.settings import get_settings
from service.jobs import admission
from service.models import Job

logger = logging.getLogger(__name__)


def release_for(tenant_id: int) -> int:
    """Release what fits of the tenant's waiting jobs and send them; how many."""
    with session_scope() as session:
        job_ids = admission.release(session, tenant_id, get_settings().quotas)
    if job_ids:  # only after the commit: a worker must find the job queued
        logger.info("tenant %s: %d waiting job(s) released", tenant_id, len(job_ids))
        enqueue_jobs(job_ids)  # a failed send is resent by the sweep (a queued job, no message)
    return len(job_ids)


def release_after(job_id: str) -> int:
    """A job of the tenant has ended (or was delivered again): its slot may be free."""
    with session_scope() as session:
        tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    return 0 if tenant_id is None else release_for(tenant_id)


def release_all() -> int:
    """Every tenant with waiting jobs: what fits now is released (the sweep's safety net)."""
    with session_scope() as session:
        tenants = admission.tenants_waiting(session)
    return sum(release_for(tenant_id) for tenant_id in tenants)
