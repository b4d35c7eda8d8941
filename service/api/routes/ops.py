"""Operations: /health (database, broker, API workers) and /metrics (Prometheus)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.auth import require_operator
from service.api.metrics import render_metrics

logger = logging.getLogger(__name__)

BROKER_CHECK_S = 1.0
_broker_lock = threading.Lock()
_broker_seen: tuple[float, bool] = (float("-inf"), False)


def broker_ok() -> bool:
    """The broker check, run by one request at a time and reused for a second: concurrent
    /health calls each opened a broker connection, and on the embedded SQLite broker they
    timed out against each other and against submissions (a false 503; bench/fuzz_api.py)."""
    global _broker_seen
    from service.core.queue import broker_reachable

    with _broker_lock:
        if time.monotonic() - _broker_seen[0] >= BROKER_CHECK_S:
            _broker_seen = (time.monotonic(), broker_reachable())
        return _broker_seen[1]


def ops_router(workers_ready: Callable[[], bool]) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Database, broker and API workers reachable")
    def health() -> JSONResponse:
        from service.core.db import get_engine

        checks = {"database": False, "broker": False, "api_workers": False}
        try:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception as exc:
            logger.warning("health: database unreachable (%s)", type(exc).__name__)
        checks["broker"] = broker_ok()
        checks["api_workers"] = workers_ready()
        healthy = all(checks.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "checks": checks},
                            status_code=200 if healthy else 503)

    @router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_operator)])
    def metrics() -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    return router
