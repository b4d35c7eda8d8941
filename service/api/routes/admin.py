"""Admin routes (issue 13): tenants, their API keys (issue, rotate, revoke) and quotas.

Only an admin key (`api_keys.is_admin`, migration 0004; `python -m service.keys create-tenant
NAME --admin` makes the first one) may call them; any other key gets 403. Raw keys are shown
once, in the answer that creates them; only prefixes, labels and dates are listed after.
A revoked key stops working at once on every API process: each checks for new revocations
at most every second (service/api/auth.py), not only when its key cache expires.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from service.api.auth import key_cache
from service.api.deps import SessionDep
from service.api.principal import Principal, require_principal
from service.api.schemas import _as_utc, whole_number
from service.models import ApiKey, Tenant, utcnow

MAX_ID = 2**31 - 1
TenantId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
KeyId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def require_admin(principal: Principal = Depends(require_principal)) -> Principal:
    if not principal.is_admin:
        raise HTTPException(403, "an admin API key is required")
    return principal


class TenantIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")


class KeyIn(BaseModel):
    model_config = ConfigDict(strict=True)  # JSON: 0 is no boolean
    label: str | None = Field(None, max_length=200, pattern=r"^[^\x00]*$")
    is_admin: bool = False


class QuotasIn(BaseModel):
    """null: the default for every tenant (NAMM_QUOTAS__*)."""

    model_config = ConfigDict(strict=True)  # JSON: "5" is no integer (5.0 is)
    max_active_jobs: int | None = Field(None, ge=0, le=1_000_000)
    max_tokens_per_day: int | None = Field(None, ge=0, le=10**15)

    _whole = field_validator("max_active_jobs", "max_tokens_per_day", mode="before")(whole_number)


class QuotasOut(QuotasIn):
    model_config = ConfigDict(strict=False)  # built here, from the database's numbers
    active_jobs: int
    tokens_today: int
    effective_max_active_jobs: int | None
    effective_max_tokens_per_day: int | None


class TenantOut(BaseModel):
    id: int
    name: str
    created_at: datetime
    active_keys: int

    _utc = field_validator("created_at")(_as_utc)  # SQLite hands back naive datetimes


class KeyOut(BaseModel):
    id: int
    tenant_id: int
    prefix: str
    label: str | None
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None

    _utc = field_validator("created_at", "revoked_at")(_as_utc)


class IssuedKeyOut(KeyOut):
    raw_key: str = Field(..., description="shown once: store it now")


def _key_out(key: ApiKey) -> KeyOut:
    return KeyOut(id=key.id, tenant_id=key.tenant_id, prefix=key.prefix, label=key.label,
                  is_admin=key.is_admin, created_at=key.created_at, revoked_at=key.revoked_at)


def _tenant(session, tenant_id: int) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise HTTPException(404, "tenant not found")
    return tenant


def _issue(session, tenant: Tenant, label: str | None, is_admin: bool) -> IssuedKeyOut:
    from service.api.keys import issue_key

    issued = issue_key(session, tenant, label=label, is_admin=is_admin)
    key = session.get(ApiKey, issued.key_id)
    session.commit()
    return IssuedKeyOut(**_key_out(key).model_dump(), raw_key=issued.raw_key)


def admin_router() -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.get("/tenants", response_model=list[TenantOut], summary="Every tenant")
    def list_tenants(session: SessionDep) -> list[TenantOut]:
        active = (select(ApiKey.tenant_id, func.count().label("n"))
                  .where(ApiKey.revoked_at.is_(None)).group_by(ApiKey.tenant_id).subquery())
        rows = session.execute(select(Tenant, func.coalesce(active.c.n, 0))
                               .outerjoin(active, active.c.tenant_id == Tenant.id)
                               .order_by(Tenant.id).limit(10_000)).all()
        return [TenantOut(id=t.id, name=t.name, created_at=t.created_at, active_keys=n)
                for t, n in rows]

    @router.post("/tenants", response_model=IssuedKeyOut, status_code=201,
                 summary="Create a tenant and its first key (shown once)",
                 responses={409: {"description": "a tenant of that name exists"}})
    def create_tenant(body: TenantIn, session: SessionDep) -> IssuedKeyOut:
        tenant = Tenant(name=body.name)
        session.add(tenant)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            raise HTTPException(409, f"tenant {body.name!r} exists") from None
        return _issue(session, tenant, label="first key", is_admin=False)

    @router.get("/tenants/{tenant_id}/keys", response_model=list[KeyOut],
                summary="A tenant's keys (prefixes only)")
    def list_keys(tenant_id: TenantId, session: SessionDep) -> list[KeyOut]:
        _tenant(session, tenant_id)
        keys = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)
                               .order_by(ApiKey.id)).all()
        return [_key_out(k) for k in keys]

    @router.post("/tenants/{tenant_id}/keys", response_model=IssuedKeyOut, status_code=201,
                 summary="Issue a key for a tenant (shown once)")
    def issue(tenant_id: TenantId, session: SessionDep,
              body: KeyIn = Body(default_factory=KeyIn)) -> IssuedKeyOut:
        return _issue(session, _tenant(session, tenant_id), body.label, body.is_admin)

    @router.post("/keys/{key_id}/rotate", response_model=IssuedKeyOut, status_code=201,
                 summary="Replace a key: a new one (shown once), the old one revoked now")
    def rotate(key_id: KeyId, session: SessionDep) -> IssuedKeyOut:
        old = session.get(ApiKey, key_id)
        if old is None or old.revoked_at is not None:
            raise HTTPException(404, "active key not found")
        old.revoked_at = utcnow()
        issued = _issue(session, _tenant(session, old.tenant_id), old.label, old.is_admin)
        key_cache().clear()  # unknown-key entries only; valid keys are looked up every request
        return issued

    @router.post("/keys/{key_id}/revoke", response_model=KeyOut,
                 summary="Revoke a key; it stops working at once")
    def revoke(key_id: KeyId, session: SessionDep) -> KeyOut:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise HTTPException(404, "key not found")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            session.commit()
            key_cache().clear()
        return _key_out(key)

    @router.get("/tenants/{tenant_id}/quotas", response_model=QuotasOut,
                summary="A tenant's quotas and usage")
    def get_quotas(tenant_id: TenantId, session: SessionDep) -> QuotasOut:
        return _quotas_out(session, tenant_id)

    @router.put("/tenants/{tenant_id}/quotas", response_model=QuotasOut,
                summary="Set a tenant's quotas (null: the default)")
    def put_quotas(tenant_id: TenantId, body: QuotasIn, session: SessionDep) -> QuotasOut:
        from service.jobs.quotas import set_limits

        _tenant(session, tenant_id)
        set_limits(session, tenant_id, max_active_jobs=body.max_active_jobs,
                   max_tokens_per_day=body.max_tokens_per_day)
        session.commit()
        return _quotas_out(session, tenant_id)

    return router


def _quotas_out(session, tenant_id: int) -> QuotasOut:
    from service.core.settings import get_settings
    from service.jobs.quotas import active_jobs, limits_for, tokens_today
    from service.models import TenantQuota

    _tenant(session, tenant_id)
    row = session.get(TenantQuota, tenant_id)
    limits = limits_for(session, tenant_id, get_settings().quotas)
    return QuotasOut(
        max_active_jobs=row.max_active_jobs if row else None,
        max_tokens_per_day=row.max_tokens_per_day if row else None,
        active_jobs=active_jobs(session, tenant_id),
        tokens_today=tokens_today(session, tenant_id),
        effective_max_active_jobs=limits.max_active_jobs,
        effective_max_tokens_per_day=limits.max_tokens_per_day)
