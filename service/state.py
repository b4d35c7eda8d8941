"""Forget per-process state built from settings (tests and the local runner switch env)."""

from __future__ import annotations


def reset_process_state() -> None:
    from service import auth, db, enqueue, metrics, settings

    settings.reset_settings_cache()
    db.reset_engine()
    enqueue.reset_celery_app()
    auth._cache = None
    metrics._job_stats.forget()
