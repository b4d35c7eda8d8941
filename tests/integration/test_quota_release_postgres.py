"""Issue 23 item 3 on the real PostgreSQL (Redis as the broker): releases of waiting batch
files and plain submissions racing never take a tenant past max_active_jobs (the race and
what it checks: tests/quota_race.py; the same on SQLite: tests/unit/test_batch_quota_waiting.py)."""

from __future__ import annotations

import pytest
from quota_race import QUOTA, race
from test_migrations_postgres import fresh_pg  # noqa: F401 (the fixture: an empty database)

from service.core.state import reset_process_state

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]


@pytest.fixture
def tenant(fresh_pg, redis_broker, monkeypatch):  # noqa: F811
    redis_url, prefix = redis_broker
    monkeypatch.setenv("NAMM_DATABASE__URL", fresh_pg)
    monkeypatch.setenv("NAMM_BROKER__URL", redis_url)
    monkeypatch.setenv("NAMM_BROKER__KEY_PREFIX", f"{prefix}quota:")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    reset_process_state()
    from service.api.keys import get_or_create_tenant
    from service.core import migrate
    from service.core.db import session_scope
    from service.jobs.quotas import set_limits

    migrate.upgrade(fresh_pg)
    with session_scope() as s:
        tenant_id = get_or_create_tenant(s, "busy").id
        set_limits(s, tenant_id, max_active_jobs=QUOTA, max_tokens_per_day=None)
    try:
        yield tenant_id
    finally:
        reset_process_state()  # close pooled connections before the database is dropped


def test_releases_and_submissions_racing_never_pass_the_quota(tenant):
    race(tenant)  # claims race too: SELECT ... FOR UPDATE makes each exclusive
