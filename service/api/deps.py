"""Dependencies the routes take as parameters: one database session per request, the tenant.

Nothing builds a session inline; a database error raised anywhere in a route reaches the one
handler in service/api/errors.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from service.api.auth import require_tenant
from service.jobs.repository import JobRepository


def get_session() -> Iterator[Session]:
    from service.core.db import session_factory

    with session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
TenantDep = Annotated[int, Depends(require_tenant)]


def get_jobs(session: SessionDep) -> JobRepository:
    return JobRepository(session)


JobsDep = Annotated[JobRepository, Depends(get_jobs)]
