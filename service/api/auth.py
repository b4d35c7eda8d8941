"""X-API-Key authentication: the key's sha256 is looked up in the database.

Revocation and rotation are immediate in every API process: a valid key is looked up on every
request, never cached (a cache with a revocation check let a revoked key through for up to a
second). Only *unknown* keys are cached, briefly, so a flood of bad keys does not hammer the
database; a key that is unknown cannot be revoked.

Where the lookup happens:
- every route but POST /v1/jobs: in the API process, one indexed query (`require_tenant`);
- POST /v1/jobs with a small body (`DEFERRED_AUTH_MAX_BYTES`): in the inference worker, one
  query for the whole batch of submissions, before any of them is validated or stored
  (`require_submitter` here, service/api/intake.py `authenticate`). Per request, that lookup
  was the largest cost of a submission (a thread hop and three database round trips), and under
  a busy model worker it set the p99 (docs/benchmarks-service.md). A request is still checked
  after it arrived, so a revoked key is refused on its very next submission;
- a submission the API process refuses itself (413, 415, 400) is answered only to a valid key:
  an unknown key gets its 401 first (`confirm_submitter`), as on every other route;
- a larger or chunked body: looked up before the body is read, so an unknown key never makes
  the service read and forward megabytes.
"""

from __future__ import annotations

import hmac
import threading
import time

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from service.api.keys import hash_key, tenant_for_key_hash
from service.core.settings import get_settings
from service.core.state import on_reset

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="tenant API key (shown once at creation)")

_MISSING = HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "APIKey"})
INVALID_KEY = HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "APIKey"})
UNKNOWN_KEY_CACHE_S = 5.0
DEFERRED_AUTH_MAX_BYTES = 256 * 1024


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


def _lookup_tenant(digest: str) -> int | None:
    from service.core.db import session_factory

    with session_factory()() as session:
        tenant_id = tenant_for_key_hash(session, digest)
    key_cache().put(digest, tenant_id)
    return tenant_id


async def _verified_tenant(request: Request, digest: str) -> int:
    cached, tenant_id = key_cache().get(digest)
    if not cached:
        tenant_id = await run_in_threadpool(_lookup_tenant, digest)
    if tenant_id is None:
        raise INVALID_KEY
    request.state.tenant_id = tenant_id
    return tenant_id


async def require_tenant(request: Request, x_api_key: str | None = Security(api_key_header)) -> int:
    """FastAPI dependency: the tenant id of a valid key (also left in request.state).

    An unknown key cached as such is refused on the event loop; every other key is looked
    up in the database (in a thread), so a revoked key fails on the very next request."""
    if not x_api_key:
        raise _MISSING
    return await _verified_tenant(request, hash_key(x_api_key))


async def require_submitter(request: Request,
                            x_api_key: str | None = Security(api_key_header)) -> None:
    """FastAPI dependency of POST /v1/jobs: leaves request.state.tenant_id (checked here) or
    request.state.key_sha256 (a small body: checked by the inference worker in its batch)."""
    if not x_api_key:
        raise _MISSING
    digest = hash_key(x_api_key)
    declared = request.headers.get("content-length", "")
    if not (declared.isdigit() and int(declared) <= DEFERRED_AUTH_MAX_BYTES):
        await _verified_tenant(request, digest)
        return
    if key_cache().get(digest)[0]:  # only unknown keys are cached
        raise INVALID_KEY
    request.state.key_sha256 = digest


async def confirm_submitter(request: Request) -> None:
    """Before the API process itself refuses a submission: a key left to the inference worker
    is checked now, so an unknown key gets 401 rather than a verdict on its body."""
    digest = getattr(request.state, "key_sha256", None)
    if digest is not None and getattr(request.state, "tenant_id", None) is None:
        await _verified_tenant(request, digest)


def remember_unknown_key(request: Request) -> None:
    """The inference worker found this request's key unknown: refuse it here next time."""
    digest = getattr(request.state, "key_sha256", None)
    if digest is not None:
        key_cache().put(digest, None)


def require_operator(x_api_key: str | None = Security(api_key_header)) -> None:
    """For /metrics: the operator key when one is configured; open otherwise (local use)."""
    expected = get_settings().api.metrics_key
    if expected is None or not expected.get_secret_value():
        return
    if not x_api_key:
        raise _MISSING
    if not hmac.compare_digest(x_api_key.encode(), expected.get_secret_value().encode()):
        raise INVALID_KEY
