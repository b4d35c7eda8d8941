"""Issue 13 over HTTP against a real API process, on SQLite and on PostgreSQL + Redis: one
bad request never hurts another, no input gives a 5xx, Idempotency-Key gives one job."""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import base_env
from reliability_stack import own_pg_database, start_api_only
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from pdf_samples import NESTED_ARRAYS, UNKNOWN_FILTER  # noqa: E402

# (body, field the 422 must name): each kind of text a database refuses, in each field
BAD_BODIES = [
    (b'{"document": "abc \\ud800 def"}', "document"),
    (b'{"document": "abc \\u0000 def"}', "document"),
    (b'{"document": "abc", "questions": ["ok", "x \\u0000"]}', "questions[1]"),
    (b'{"document": "abc", "filename": "\\udc80.txt"}', "filename"),
    (b'{"document": "abc", "kind": "extract", "instruction": "a\\u0000"}', "instruction"),
    (b'{"document": "abc", "questions": ["\\ud83d"]}', "questions[0]"),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"isolation-{request.param}")
    if request.param == "sqlite":
        env = base_env(tmp, NAMM_DATABASE__URL=f"sqlite:///{tmp / 'namm.db'}",
                       NAMM_BROKER__URL=f"sqla+sqlite:///{tmp / 'broker.db'}")
    else:
        # a database and a queue of its own: the hundreds of jobs left queued here must not
        # reach the workers of other modules (they share the session's database and prefix)
        redis_url, prefix = request.getfixturevalue("redis_broker")
        with own_pg_database("isolation") as pg_url:
            env = base_env(tmp, NAMM_DATABASE__URL=pg_url, NAMM_BROKER__URL=redis_url,
                           NAMM_BROKER__KEY_PREFIX=f"{prefix}isolation:")
            stack = start_api_only(env, tmp / "logs")
            yield stack
            stack.procs.stop()
        return
    stack = start_api_only(env, tmp / "logs")
    yield stack
    stack.procs.stop()


def _post(stack, body: bytes, key: int = 0, **headers) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/jobs", content=body, timeout=60,
                      headers={"X-API-Key": stack.keys[key], "Content-Type": "application/json",
                               **headers})


def _stored_jobs(tenant_name: str) -> int:
    from service.core.db import session_scope
    from service.models import Job, Tenant

    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Job).join(Tenant)
                        .where(Tenant.name == tenant_name)) or 0


def test_mixed_concurrent_batches_accept_every_valid_submission(api):
    before = _stored_jobs("tenant-b")
    bodies: list[tuple[bytes, str | None]] = []
    for i in range(60):
        if i % 10 == 3:
            bodies.append(BAD_BODIES[(i // 10) % len(BAD_BODIES)])
        else:
            bodies.append((json.dumps({"document": f"valid document {i}",
                                       "questions": [f"question {i}?"]}).encode(), None))
    for _round in range(2):  # twice: batches form differently each time
        with cf.ThreadPoolExecutor(60) as pool:
            answers = list(pool.map(lambda b: _post(api, b[0], key=1), bodies))
        for (body, field), r in zip(bodies, answers):
            if field is None:
                assert r.status_code == 202, r.text
            else:
                assert r.status_code == 422, (body, r.text)
                detail = r.json()["detail"]
                assert detail.startswith(f"{field}:") and "offset" in detail, detail
    assert _stored_jobs("tenant-b") == before + 2 * 54


def test_no_5xx_from_parameters_limits_or_files(api):
    headers = {"X-API-Key": api.keys[0]}
    for query in ("offset=99999999999999999999999", "limit=99999999999999999999999",
                  "offset=-1", "limit=0"):
        r = httpx.get(f"{api.url}/v1/jobs?{query}", headers=headers)
        assert r.status_code == 422, (query, r.text)
    for job_id in ("a%00b", "x" * 65, "%ED%A0%80", "00000000-0000-0000-0000-000000000000"):
        for method, path in (("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/cancel")):
            r = httpx.request(method, f"{api.url}{path}", headers=headers)
            assert r.status_code in (404, 422), (method, path, r.text)
    # the rest of the request is bounded too, not just the document
    big_question = json.dumps({"document": "123456789", "questions": ["q" * 5000]}).encode()
    assert _post(api, big_question).status_code == 422
    # 30 questions of 3,000 four-byte characters: each within its limit, 360 KB together
    many = json.dumps({"document": "x", "questions": ["\U0001F600" * 3000] * 30}).encode()
    r = _post(api, many)
    assert r.status_code == 413 and "limit" in r.json()["detail"], r.text
    long_name = json.dumps({"document": "x", "filename": "f" * 300}).encode()
    assert _post(api, long_name).status_code == 422
    for pdf in (UNKNOWN_FILTER, NESTED_ARRAYS):
        r = httpx.post(f"{api.url}/v1/jobs", headers=headers, timeout=60,
                       files={"file": ("a.pdf", pdf, "application/pdf")})
        assert r.status_code == 422 and "PDF" in r.json()["detail"], r.text
    r = httpx.post(f"{api.url}/v1/jobs", headers=headers, timeout=60, data={"filename": "a\x00b"},
                   files={"file": ("a.txt", b"text", "text/plain")})
    assert r.status_code == 422 and r.json()["detail"].startswith("filename:"), r.text


# (form fields, field the 422 must name): BAD_BODIES sent as multipart. `questions` as one
# JSON list string whose escapes spell the bad character (issue 23 #6: a 500 and a silent NUL)
BAD_FORMS = [
    ({"questions": '["a\\ud800b"]'}, "questions[0]"),
    ({"questions": '["ok", "a\\u0000b"]'}, "questions[1]"),
    ({"questions": '["\\udc80"]'}, "questions[0]"),
    ({"questions": "plain \x00 question"}, "questions"),
    ({"kind": "extract", "instruction": "a\x00"}, "instruction"),
    ({"policy": "namm\x00"}, "policy"),
    ({"kind": "ans\x00wer", "questions": "q"}, "kind"),
    ({"budget": '{"tokens": "\\u0000"}'}, "budget.tokens"),
    ({"budget": "0.\x005"}, "budget"),
    ({"filename": "a\x00b.txt"}, "filename"),
]


@pytest.mark.parametrize("fields, field", BAD_FORMS)
def test_multipart_text_fields_are_checked_like_json_bodies(api, fields, field):
    before = _stored_jobs("tenant-a")
    r = httpx.post(f"{api.url}/v1/jobs", headers={"X-API-Key": api.keys[0]}, timeout=60,
                   data=fields, files={"file": ("doc.txt", b"a document", "text/plain")})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"{field}:") and "offset" in detail, detail
    assert _stored_jobs("tenant-a") == before
    # the same words, valid, are accepted: only the bad character was refused
    ok = httpx.post(f"{api.url}/v1/jobs", headers={"X-API-Key": api.keys[0]}, timeout=60,
                    data={"questions": '["a b"]'},
                    files={"file": ("doc.txt", b"a document", "text/plain")})
    assert ok.status_code == 202, ok.text


def test_idempotency_key_one_job_per_key_and_body(api):
    body = json.dumps({"document": "idempotent document", "questions": ["Who?"]}).encode()
    key = {"Idempotency-Key": f"retry-{api.url[-5:]}"}
    before = _stored_jobs("tenant-a")
    with cf.ThreadPoolExecutor(12) as pool:  # concurrent duplicates: one job
        answers = list(pool.map(lambda _: _post(api, body, **key), range(12)))
    assert {r.status_code for r in answers} == {202}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert _stored_jobs("tenant-a") == before + 1
    # the same body with other spacing and key order is the same request
    same = json.dumps({"questions": ["Who?"], "document": "idempotent document"},
                      indent=2).encode()
    assert _post(api, same, **key).json()["id"] == answers[0].json()["id"]
    other = _post(api, json.dumps({"document": "another document"}).encode(), **key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    # tenant-scoped: another tenant's identical key is its own job
    theirs = _post(api, body, key=1, **key)
    assert theirs.status_code == 202 and theirs.json()["id"] != answers[0].json()["id"]
    assert _post(api, body, **{"Idempotency-Key": "é".encode() * 3}).status_code == 422
    assert _post(api, body, **{"Idempotency-Key": "k" * 256}).status_code == 422
    assert _stored_jobs("tenant-a") == before + 1


@pytest.mark.parametrize("api", ["postgresql"], indirect=True)  # server connections to kill
def test_postgres_connections_terminated_mid_request(api):
    """pg_terminate_backend on every API connection while submissions and reads run: each
    request answers 2xx or 503 (never 500), and once the killing stops every request works,
    with no restart."""
    import threading

    import psycopg
    from conftest import PG_HOST, PG_PORT

    dbname = api.env["NAMM_DATABASE__URL"].rsplit("/", 1)[1]
    stop = threading.Event()
    killed = [0]

    def terminate() -> None:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=dbname,
                             autocommit=True) as conn:
            while not stop.is_set():
                killed[0] += len(conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchall())
                time.sleep(0.05)

    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    codes: list[int] = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            codes.append(_post(api, json.dumps({"document": "during the outage"}).encode())
                         .status_code)
            codes.append(httpx.get(f"{api.url}/v1/jobs?limit=5",
                                   headers={"X-API-Key": api.keys[0]}).status_code)
    finally:
        stop.set()
        killer.join(timeout=10)
    print(f"\npg_terminate_backend: {killed[0]} connections killed under {len(codes)} requests: "
          f"{ {c: codes.count(c) for c in sorted(set(codes))} }")
    assert killed[0] > 0
    assert set(codes) <= {200, 202, 503}, codes
    for _ in range(5):  # recovered, no restart
        assert _post(api, json.dumps({"document": "after"}).encode()).status_code == 202
        assert httpx.get(f"{api.url}/v1/jobs", headers={"X-API-Key": api.keys[0]}).status_code == 200


@pytest.mark.parametrize("api", ["postgresql"], indirect=True)  # NUL reaches the server there
def test_fuzzed_requests_never_get_a_5xx(api):
    """A short run of bench/fuzz_api.py (the benchmark run sends 2,000+ cases): every
    operation of the OpenAPI description, schema-built and hostile inputs, concurrently."""
    from bench.fuzz_api import fuzz, print_table

    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope

    with session_scope() as s:
        admin = issue_key(s, get_or_create_tenant(s, "fuzz-ops"), is_admin=True).raw_key
    rows = fuzz(api.url, {"user": api.keys[0], "other": api.keys[1], "admin": admin},
                total_cases=200, seed=7)
    problems = print_table(rows)
    assert sum(r.cases for r in rows.values()) >= 150
    assert problems == 0, ({name: row.errors for name, row in rows.items() if row.errors},
                           api.procs.log_tail("api", 60))
