"""X-API-Key authentication: the key's sha256 is looked up in the database.

Revocation and rotation are immediate in every API process: a valid key is looked up on every
request (one indexed query, the price of no window at all; a cache with a revocation check
let a revoked key through for up to a second). Only *unknown* keys are cached, briefly, so
a flood of bad keys does not hammer the database; a key that is unknown cannot be revoked.
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
UNKNOWN_KEY_CACHE_S = 5.0


class KeyCache:
    """Hashes of keys the database did not know, for UNKNOWN_KEY_CACHE_S; never a valid key."""

    def __init__(self, ttl_s: float = UNKNOWN_KEY_CACHE_S, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> tuple[bool, int | None]:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key_hash: str, tenant_id: int | None) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded; misses just hit the database
            if tenant_id is None:  # a valid key is never cached: revocation stays immediate
                self._entries[key_hash] = (time.monotonic() + self.ttl_s, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache: KeyCache | None = None


def key_cache() -> KeyCache:
    global _cache
    if _cache is None:
        _cache = KeyCache(min(get_settings().api.key_cache_s, UNKNOWN_KEY_CACHE_S))
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

    An unknown key cached as such is refused on the event loop; every other key is looked
    up in the database (in a thread), so a revoked key fails on the very next request."""
    if not x_api_key:
        raise _MISSING
    digest = hash_key(x_api_key)
    cached, tenant_id = key_cache().get(digest)
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
