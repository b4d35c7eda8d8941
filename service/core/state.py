"""Forget per-process state built from settings (tests and the local runner switch env).

Modules that cache something derived from settings register a reset with `on_reset`; core
never imports the modules above it to reach their caches.
"""

from __future__ import annotations

from collections.abc import Callable

_resets: list[Callable[[], None]] = []


def on_reset(reset: Callable[[], None]) -> Callable[[], None]:
    """Register `reset` to run on reset_process_state (usable as a decorator)."""
    _resets.append(reset)
    return reset


def reset_process_state() -> None:
    from service.core import db, queue, settings

    settings.reset_settings_cache()
    db.reset_engine()
    queue.reset_celery_app()
    for reset in list(_resets):
        reset()
