"""Who is calling: the tenant of the X-API-Key and whether the key is an admin key.

`ApiKey.is_admin` (migration 0004) marks a key that may read every tenant's reports (and
group them by tenant); every other key sees its own tenant only. The tenant check itself is
`require_tenant` (cached); the admin flag is read from the database on the routes that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from service.api.auth import api_key_header, require_tenant
from service.api.keys import hash_key
from service.models import ApiKey


@dataclass(frozen=True)
class Principal:
    tenant_id: int
    is_admin: bool


def _is_admin(raw_key: str) -> bool:
    from service.core.db import session_factory

    with session_factory()() as session:
        return bool(session.scalar(select(ApiKey.is_admin).where(
            ApiKey.key_hash == hash_key(raw_key), ApiKey.revoked_at.is_(None))))


async def require_principal(request: Request, tenant_id: int = Depends(require_tenant),
                            x_api_key: str | None = Security(api_key_header)) -> Principal:
    is_admin = await run_in_threadpool(_is_admin, x_api_key or "")
    return Principal(tenant_id=tenant_id, is_admin=is_admin)


PrincipalDep = Annotated[Principal, Depends(require_principal)]
