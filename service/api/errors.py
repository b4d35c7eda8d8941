"""The one place where exceptions become HTTP errors (besides the 4xx the routes raise).

A database that fails is the service's problem: 503, "retry shortly". Anything else that
escapes a route is a bug: 500, logged here with its traceback, never reported as the
client's mistake. Errors that quote the client's input (FastAPI's 422 lists each bad value)
have lone surrogates replaced first (JSON with "\ud800" in it cannot be encoded as UTF-8)
and non-finite numbers turned into text: quoting either back used to turn the 422 into a
500 (found by bench/fuzz_api.py).
"""

from __future__ import annotations

import logging

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.text_checks import normalise_extracted

logger = logging.getLogger(__name__)


def printable(value: Any) -> Any:
    """`value` fit for a JSON answer: strings without lone surrogates and NUL, non-finite
    numbers (Python's JSON reader accepts `Infinity` and `NaN`) as text."""
    if isinstance(value, str):
        return normalise_extracted(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": printable(jsonable_encoder(exc.errors()))},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        exc.detail = printable(exc.detail)
        return await http_exception_handler(request, exc)

    @app.exception_handler(SQLAlchemyError)
    async def database_unavailable(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        if isinstance(exc, DataError):  # the database refused a value of the request, e.g. a
            # NUL in a path parameter on PostgreSQL: the request's fault, not an outage
            logger.warning("database refused a value on %s %s: %s", request.method,
                           request.url.path, str(exc.orig).splitlines()[0][:200])
            return JSONResponse({"detail": "a value of this request cannot be used (e.g. a NUL "
                                           "character or a number out of range)"},
                                status_code=422)
        logger.error("database error on %s %s: %s", request.method, request.url.path,
                     type(exc).__name__)
        return JSONResponse({"detail": "the database is unavailable; retry shortly"},
                            status_code=503)
