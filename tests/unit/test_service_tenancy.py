"""Issue 13, tenancy: admin keys manage tenants, keys (issue, rotate, revoke: at once, on
every process) and quotas; quotas answer 429 with Retry-After; other tenants' ids are 404.
In-process LitServe app on SQLite and the embedded broker."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from tests.sqlite_service import in_process_api, sqlite_service


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenancy")
    (tmp / "repos" / "demo").mkdir(parents=True)
    (tmp / "repos" / "demo" / "a.py").write_text("X = 1\n")
    with sqlite_service(tmp, NAMM_BATCHES__ALLOWED_ROOTS=f'["{tmp / "repos"}"]'):
        yield tmp


@pytest.fixture(scope="module")
def keys(env):
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope

    with session_scope() as s:
        admin = issue_key(s, get_or_create_tenant(s, "operator"), is_admin=True).raw_key
        user = issue_key(s, get_or_create_tenant(s, "acme")).raw_key
    return {"admin": admin, "user": user}


@pytest.fixture(scope="module")
def client(keys):
    with in_process_api() as c:
        yield c


def _h(key: str, **extra) -> dict:
    return {"X-API-Key": key, **extra}


def test_admin_routes_need_an_admin_key(client, keys):
    assert client.get("/v1/admin/tenants").status_code == 401
    r = client.get("/v1/admin/tenants", headers=_h(keys["user"]))
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    names = [t["name"] for t in client.get("/v1/admin/tenants", headers=_h(keys["admin"])).json()]
    assert {"operator", "acme"} <= set(names)  # the admin sees every tenant
    assert client.get("/v1/admin/tenants/999999/keys", headers=_h(keys["admin"])).status_code == 404
    assert client.get("/v1/admin/tenants/99999999999/keys",
                      headers=_h(keys["admin"])).status_code == 422


def test_tenant_keys_rotation_and_immediate_revocation(client, keys):
    admin = _h(keys["admin"])
    created = client.post("/v1/admin/tenants", json={"name": "globex"}, headers=admin)
    assert created.status_code == 201, created.text
    first = created.json()
    assert client.post("/v1/admin/tenants", json={"name": "globex"}, headers=admin).status_code == 409
    assert client.get("/v1/jobs", headers=_h(first["raw_key"])).status_code == 200
    listed = client.get(f"/v1/admin/tenants/{first['tenant_id']}/keys", headers=admin).json()
    assert [k["prefix"] for k in listed] == [first["raw_key"][:12]]
    assert "raw_key" not in listed[0] and "key_hash" not in listed[0]
    rotated = client.post(f"/v1/admin/keys/{first['id']}/rotate", headers=admin)
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["raw_key"]
    assert client.get("/v1/jobs", headers=_h(new)).status_code == 200
    assert client.get("/v1/jobs", headers=_h(first["raw_key"])).status_code == 401
    # revoked by another process (here: straight in the database): refused on the very next
    # request, with no wait (valid keys are never cached)
    from service.core.db import session_scope
    from service.models import ApiKey, utcnow

    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.id == rotated.json()["id"])
                  .values(revoked_at=utcnow()))
    assert client.get("/v1/jobs", headers=_h(new)).status_code == 401
    # a submission's key is checked by the inference worker, after the request arrived
    submitted = client.post("/v1/jobs", json={"document": "x"}, headers=_h(new))
    assert submitted.status_code == 401, submitted.text
    extra = client.post(f"/v1/admin/tenants/{first['tenant_id']}/keys", headers=admin,
                        json={"label": "ci"}).json()
    assert client.get("/v1/jobs", headers=_h(extra["raw_key"])).status_code == 200
    revoked = client.post(f"/v1/admin/keys/{extra['id']}/revoke", headers=admin).json()
    assert revoked["revoked_at"] is not None
    assert client.get("/v1/jobs", headers=_h(extra["raw_key"])).status_code == 401


def _tenant_id(client, keys, name: str) -> int:
    tenants = client.get("/v1/admin/tenants", headers=_h(keys["admin"])).json()
    return next(t["id"] for t in tenants if t["name"] == name)


def test_active_jobs_quota_is_429_with_retry_after(client, keys):
    admin, user = _h(keys["admin"]), _h(keys["user"])
    tenant = _tenant_id(client, keys, "acme")
    active = client.get(f"/v1/admin/tenants/{tenant}/quotas", headers=admin).json()["active_jobs"]
    r = client.put(f"/v1/admin/tenants/{tenant}/quotas", headers=admin,
                   json={"max_active_jobs": active + 2, "max_tokens_per_day": None})
    assert r.status_code == 200 and r.json()["effective_max_active_jobs"] == active + 2
    ids = [client.post("/v1/jobs", json={"document": f"d{i}"}, headers=user) for i in range(2)]
    assert [r.status_code for r in ids] == [202, 202]
    keyed = client.post("/v1/jobs", json={"document": "d0"}, headers=_h(keys["user"],
                        **{"Idempotency-Key": "quota-key"}))
    assert keyed.status_code == 429
    over = client.post("/v1/jobs", json={"document": "one too many"}, headers=user)
    assert over.status_code == 429 and over.headers["Retry-After"] == "30", over.text
    assert "quota" in over.json()["detail"]
    client.post(f"/v1/jobs/{ids[0].json()['id']}/cancel", headers=user)
    assert client.post("/v1/jobs", json={"document": "fits again"}, headers=user).status_code == 202
    client.put(f"/v1/admin/tenants/{tenant}/quotas", headers=admin,
               json={"max_active_jobs": None, "max_tokens_per_day": None})
    assert client.post("/v1/jobs", json={"document": "unlimited"}, headers=user).status_code == 202


def test_daily_token_quota_is_429_until_midnight(client, keys):
    from service.core.db import session_scope
    from service.models import UsageRecord

    admin, user = _h(keys["admin"]), _h(keys["user"])
    tenant = _tenant_id(client, keys, "acme")
    job_id = client.post("/v1/jobs", json={"document": "counted"}, headers=user).json()["id"]
    with session_scope() as s:  # what a finished job records
        s.add(UsageRecord(job_id=job_id, tenant_id=tenant, model="m", policy="full",
                          tokens_in=900, tokens_out=100, kv_kept_fraction=1.0, kv_bytes_peak=1,
                          kv_bytes_full_peak=1, seconds=1.0, cost_micro_usd=1))
    quotas = client.put(f"/v1/admin/tenants/{tenant}/quotas", headers=admin,
                        json={"max_active_jobs": None, "max_tokens_per_day": 1000}).json()
    assert quotas["tokens_today"] == 1000
    over = client.post("/v1/jobs", json={"document": "x"}, headers=user)
    assert over.status_code == 429 and "daily token quota" in over.json()["detail"]
    assert 0 < int(over.headers["Retry-After"]) <= 86400 + 1
    other = client.post("/v1/jobs", json={"document": "x"}, headers=_h(keys["admin"]))
    assert other.status_code == 202  # another tenant's quota is its own
    client.put(f"/v1/admin/tenants/{tenant}/quotas", headers=admin,
               json={"max_active_jobs": None, "max_tokens_per_day": None})


def test_other_tenants_ids_are_404(client, keys):
    job_id = client.post("/v1/jobs", json={"document": "mine"}, headers=_h(keys["user"])).json()["id"]
    for method, path in (("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/cancel")):
        assert client.request(method, path, headers=_h(keys["admin"])).status_code == 404


def test_errors_that_quote_the_input_never_become_500(client, keys):
    """FastAPI's 422 quotes each bad value; a lone surrogate or Infinity in it could not be
    written as JSON, and the 422 became a 500 (found by bench/fuzz_api.py)."""
    admin = _h(keys["admin"], **{"Content-Type": "application/json"})
    r = client.get("/v1/jobs?offset=%ED%A0%80", headers=_h(keys["user"]))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "offset"]
    for body in (b'{"max_active_jobs": "\\ud800"}', b'{"max_active_jobs": Infinity}',
                 b'{"max_tokens_per_day": NaN}'):
        r = client.put("/v1/admin/tenants/1/quotas", content=body, headers=admin)
        assert r.status_code == 422, (body, r.text)


def test_other_tenants_ids_are_404_on_every_route(client, keys, env):
    """Every operation of the OpenAPI description with an id in its path (jobs, batches,
    schedules, and whatever is added later), called by another tenant with an id the owner
    holds: 404, like a missing id, never the resource or a 403 that confirms it exists."""
    owner, other = _h(keys["user"]), _h(keys["admin"])  # the admin's tenant is another one
    source = {"kind": "path", "path": str(env / "repos" / "demo")}
    ids = {
        "job_id": client.post("/v1/jobs", json={"document": "owned"}, headers=owner).json()["id"],
        "batch_id": client.post("/v1/batches", json={"source": source, "max_new_tokens": 8},
                                headers=owner).json()["id"],
        "schedule_id": client.post("/v1/schedules", headers=owner, json={
            "cron": "0 2 * * *", "timezone": "UTC", "source": source}).json()["id"],
    }
    spec = client.get("/openapi.json").json()
    probed = []
    for path, item in spec["paths"].items():
        names = [n for n in ids if "{" + n + "}" in path]
        if not names or path.startswith("/v1/admin"):
            continue
        for method in item:
            url = path
            for name in names:
                url = url.replace("{" + name + "}", ids[name])
            body = {} if method in ("post", "patch", "put") else None
            r = client.request(method.upper(), url, headers=other, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert client.request(method.upper(), url, headers=owner, json=body
                                  ).status_code != 404 or method == "delete", (method, path)
            probed.append(f"{method.upper()} {path}")
    assert {"GET /v1/jobs/{job_id}", "GET /v1/batches/{batch_id}",
            "GET /v1/schedules/{schedule_id}"} <= set(probed)
    # and listings show the owner's alone
    for path in ("/v1/jobs", "/v1/batches", "/v1/schedules"):
        listed = json.dumps(client.get(path, headers=other).json())
        assert not any(v in listed for v in ids.values()), path
