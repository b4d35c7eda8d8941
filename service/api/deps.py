"""Dependencies the routes take as parameters: one database session per request, the tenant.

Nothing builds a session inline; a database error raised anywhere in a route reaches the one
handler in service/api/errors.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.api.auth import require_tenant
from service.jobs.repository import JobRepository

logger = logging.getLogger(__name__)


def get_session() -> Iterator[Session]:
    from service.core.db import session_factory

    session = session_factory()()
    try:
        yield session
    finally:
        try:
            session.close()
        except SQLAlchemyError as exc:
            # FastAPI closes this after the answer has been sent: a connection killed under
            # the session (pg_terminate_backend, a restart) fails its rollback here, and
            # raising would make the error handler start a second response and drop the
            # keep-alive connection. The pool has already discarded the dead connection.
            logger.warning("database session not closed cleanly: %s", type(exc).__name__)


SessionDep = Annotated[Session, Depends(get_session)]
TenantDep = Annotated[int, Depends(require_tenant)]


def get_jobs(session: SessionDep) -> JobRepository:
    return JobRepository(session)


JobsDep = Annotated[JobRepository, Depends(get_jobs)]
