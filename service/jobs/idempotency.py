"""Idempotency keys of submissions (issue 13; schema in migration 0005).

A client that retries `POST /v1/jobs` with the same `Idempotency-Key` header gets the job of
its first attempt instead of a second job (and a second bill). One row per (tenant, key):
the sha256 of the request it was first used with, and the job it made. The same key with
another request is a conflict (409). Keys answer for `api.idempotency_ttl_s` (24 h by
default); an older key is forgotten at its next use and purged by the sweeper.

Race-safe by the unique constraint on (tenant_id, key): of two concurrent first uses, one
commits its job and its key; the other's INSERT fails, its transaction (job included) rolls
back, and it answers with the winner's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.models import IdempotencyKey, Job, utcnow


@dataclass(frozen=True)
class Replay:
    """What an earlier use of the key answers: its job (same request) or a conflict."""

    job_id: str
    status: str
    same_request: bool


def find(session: Session, tenant_id: int, key: str, request_sha256: str,
         ttl_s: float) -> Replay | None:
    """The earlier use of `key` by this tenant within the TTL; an expired one is deleted."""
    row = session.execute(
        select(IdempotencyKey, Job.status).join(Job, Job.id == IdempotencyKey.job_id)
        .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
    ).first()
    if row is None:
        return None
    entry, status = row
    created = entry.created_at
    if created.tzinfo is None:  # SQLite hands back naive datetimes; everything stored is UTC
        created = created.replace(tzinfo=timezone.utc)
    if created < utcnow() - timedelta(seconds=ttl_s):
        session.delete(entry)
        session.flush()
        return None
    return Replay(entry.job_id, status, entry.request_sha256 == request_sha256)


def remember(session: Session, tenant_id: int, key: str, request_sha256: str,
             job_id: str) -> None:
    session.add(IdempotencyKey(tenant_id=tenant_id, key=key, request_sha256=request_sha256,
                               job_id=job_id))
    session.flush()  # the unique constraint speaks here, inside the caller's transaction


def purge_expired(session: Session, ttl_s: float) -> int:
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return result.rowcount or 0
