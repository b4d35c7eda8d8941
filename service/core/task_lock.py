"""At most one run at a time of a periodic task (the sweep, the batch tick), across workers.

A tick that finds another of its kind running returns at once instead of queueing behind it.
The lock lives where the broker lives, so it needs nothing new: on Redis a key set with NX and a
TTL (a crashed holder frees it after `ttl_s`); on the embedded SQLite broker, whose workers all
run on this machine, an flock on a file beside the broker's database (the kernel frees it when
the holder dies).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from service.core.settings import get_settings

# a periodic task that outlives this (a killed worker) frees its lock; overlap past it is only
# doubled idempotent work
PERIODIC_LOCK_TTL_S = 300.0


@contextlib.contextmanager
def run_alone(kind: str, ttl_s: float) -> Iterator[bool]:
    """Yields True when this caller holds the lock of `kind`, False when another one does."""
    settings = get_settings().broker
    url = settings.url.get_secret_value()
    if url.startswith(("redis://", "rediss://")):
        with _redis_lock(url, f"{settings.key_prefix or ''}namm-lock:{kind}", ttl_s) as held:
            yield held
    else:
        path = url.split("sqlite:///", 1)[-1] if "sqlite:///" in url else None
        folder = Path(path).parent if path else Path(os.environ.get("TMPDIR", "/tmp"))
        with _file_lock(folder / f".namm-lock-{kind}") as held:
            yield held


@contextlib.contextmanager
def _redis_lock(url: str, key: str, ttl_s: float) -> Iterator[bool]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    token = uuid.uuid4().hex
    held = bool(client.set(key, token, nx=True, px=int(ttl_s * 1000)))
    try:
        yield held
    finally:
        if held:  # free it only if it is still ours (the TTL may have handed it on)
            client.eval("if redis.call('get', KEYS[1]) == ARGV[1] then "
                        "return redis.call('del', KEYS[1]) end return 0", 1, key, token)
        client.close()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
