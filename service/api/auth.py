"""X-API-Key authentication: the key's sha256 is looked up in the database.

A small per-process cache (key hash -> tenant id, `api.key_cache_s` seconds) keeps the lookup
off the hot path of submissions. Revocation is immediate all the same: every process checks
at most every REVOCATION_CHECK_S whether any key was revoked since (one small query on
api_keys) and then forgets its cache.
"""

from __future__ import annotations

import hmac
import threading
import time

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from service.api.keys import hash_key, tenant_for_key
from service.core.settings import get_settings
from service.core.state import on_reset

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="tenant API key (shown once at creation)")

_MISSING = HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "APIKey"})
_INVALID = HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "APIKey"})
REVOCATION_CHECK_S = 1.0


class KeyCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()
        self._revocations: tuple | None = None  # (revoked keys, latest revocation) last seen
        self._checked_at = float("-inf")

    def revocations_due(self) -> bool:
        return time.monotonic() - self._checked_at >= REVOCATION_CHECK_S

    def check_revocations(self) -> None:
        """Forget every cached key when a key was revoked since the last check."""
        from sqlalchemy import func, select

        from service.core.db import session_factory
        from service.jobs.models import ApiKey

        with session_factory()() as session:
            seen = tuple(session.execute(
                select(func.count(ApiKey.revoked_at), func.max(ApiKey.revoked_at))).one())
        with self._lock:
            if self._revocations is not None and seen != self._revocations:
                self._entries.clear()
            self._revocations = seen
            self._checked_at = time.monotonic()

    def get(self, key_hash: str) -> tuple[bool, int | None]:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key_hash: str, tenant_id: int | None) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded; misses just hit the database
            # unknown keys are cached briefly too, so a flood of bad keys does not hammer the DB
            ttl = self.ttl_s if tenant_id is not None else min(self.ttl_s, 5.0)
            self._entries[key_hash] = (time.monotonic() + ttl, tenant_id)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache: KeyCache | None = None


def key_cache() -> KeyCache:
    global _cache
    if _cache is None:
        _cache = KeyCache(get_settings().api.key_cache_s)
    return _cache


@on_reset
def _forget_key_cache() -> None:
    global _cache
    _cache = None


def _lookup_tenant(raw_key: str, digest: str) -> int | None:
    from service.core.db import session_factory

    with session_factory()() as session:
        tenant_id = tenant_for_key(session, raw_key)
    key_cache().put(digest, tenant_id)
    return tenant_id


async def require_tenant(request: Request, x_api_key: str | None = Security(api_key_header)) -> int:
    """FastAPI dependency: the tenant id of a valid key (also left in request.state).

    Async so that a cache hit (nearly every request) stays on the event loop; only a miss
    goes to a thread for the database lookup."""
    if not x_api_key:
        raise _MISSING
    digest = hash_key(x_api_key)
    cache = key_cache()
    if cache.revocations_due():
        await run_in_threadpool(cache.check_revocations)
    cached, tenant_id = cache.get(digest)
    if not cached:
        tenant_id = await run_in_threadpool(_lookup_tenant, x_api_key, digest)
    if tenant_id is None:
        raise _INVALID
    request.state.tenant_id = tenant_id
    return tenant_id


def require_operator(x_api_key: str | None = Security(api_key_header)) -> None:
    """For /metrics: the operator key when one is configured; open otherwise (local use)."""
    expected = get_settings().api.metrics_key
    if expected is None or not expected.get_secret_value():
        return
    if not x_api_key:
        raise _MISSING
    if not hmac.compare_digest(x_api_key.encode(), expected.get_secret_value().encode()):
        raise _INVALID
