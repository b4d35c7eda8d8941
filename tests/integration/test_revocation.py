"""Issue 23 #4: revocation and rotation are immediate across API processes. Two real API
processes share one PostgreSQL database; a key revoked or rotated through one is refused by
the other on the very next request (no cache window)."""

from __future__ import annotations

import httpx
import pytest
from conftest import base_env, free_port
from reliability_stack import own_pg_database, start_api_only

pytestmark = pytest.mark.services


def test_revoke_and_rotate_then_the_next_request_on_another_process_is_401(tmp_path, redis_broker):
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope
    from service.dev.processes import api_command

    redis_url, prefix = redis_broker
    with own_pg_database("revocation") as pg_url:
        env = base_env(tmp_path, NAMM_DATABASE__URL=pg_url, NAMM_BROKER__URL=redis_url,
                       NAMM_BROKER__KEY_PREFIX=f"{prefix}revocation:")
        first = start_api_only(env, tmp_path / "logs-a")
        try:
            port = free_port()
            first.procs.start("api-b", api_command(port, api_servers=1))
            first.procs.wait_healthy(f"http://127.0.0.1:{port}", timeout_s=120)
            a, b = first.url, f"http://127.0.0.1:{port}"
            with session_scope() as s:
                admin = {"X-API-Key": issue_key(s, get_or_create_tenant(s, "ops"),
                                                is_admin=True).raw_key}
            tenant = httpx.post(f"{a}/v1/admin/tenants", json={"name": "victim"},
                                headers=admin, timeout=30).json()["tenant_id"]
            for round_ in range(20):
                key = httpx.post(f"{a}/v1/admin/tenants/{tenant}/keys", headers=admin,
                                 json={"label": f"k{round_}"}, timeout=30).json()
                old = {"X-API-Key": key["raw_key"]}
                for url in (a, b, a, b):  # used on both processes just before
                    assert httpx.get(f"{url}/v1/jobs", headers=old, timeout=30).status_code == 200
                r = httpx.post(f"{b}/v1/jobs", json={"document": "x"}, headers=old, timeout=30)
                assert r.status_code == 202, r.text
                if round_ % 2:
                    r = httpx.post(f"{a}/v1/admin/keys/{key['id']}/revoke", headers=admin,
                                   timeout=30)
                    assert r.status_code == 200, r.text
                else:
                    r = httpx.post(f"{a}/v1/admin/keys/{key['id']}/rotate", headers=admin,
                                   timeout=30)
                    assert r.status_code == 201, r.text
                    new = {"X-API-Key": r.json()["raw_key"]}
                    assert httpx.get(f"{b}/v1/jobs", headers=new, timeout=30).status_code == 200
                # the very next request, on the other process and on the same one; a
                # submission's key is checked by the inference worker of its process
                assert httpx.get(f"{b}/v1/jobs", headers=old, timeout=30).status_code == 401
                assert httpx.get(f"{a}/v1/jobs", headers=old, timeout=30).status_code == 401
                for url in (b, a):
                    r = httpx.post(f"{url}/v1/jobs", json={"document": "x"}, headers=old,
                                   timeout=30)
                    assert r.status_code == 401, r.text
        finally:
            first.procs.stop()
