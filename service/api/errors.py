"""The one place where exceptions become HTTP errors (besides the 4xx the routes raise).

A database that fails is the service's problem: 503, "retry shortly". Anything else that
escapes a route is a bug: 500, logged here with its traceback, never reported as the
client's mistake.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SQLAlchemyError)
    async def database_unavailable(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        logger.error("database error on %s %s: %s", request.method, request.url.path,
                     type(exc).__name__)
        return JSONResponse({"detail": "the database is unavailable; retry shortly"},
                            status_code=503)
