"""The API in-process: LitServe with its real inference worker, SQLite, and kombu's SQLAlchemy
broker on a SQLite file (no servers). Checks auth, submission, validation, tenancy, paging,
cancel, health and metrics. The worker side is tested in test_service_worker.py and end to end
in tests/integration/."""

import io
import json

import pytest

from tests.sqlite_service import in_process_api, sqlite_service


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with sqlite_service(tmp_path_factory.mktemp("api"), NAMM_LIMITS__MAX_DOCUMENT_BYTES="20000",
                        NAMM_API__METRICS_KEY="operator-secret") as tmp:
        yield tmp


@pytest.fixture(scope="module")
def keys(env):
    from service.core.db import session_scope
    from service.api.keys import get_or_create_tenant, issue_key

    with session_scope() as s:
        a = issue_key(s, get_or_create_tenant(s, "acme")).raw_key
        b = issue_key(s, get_or_create_tenant(s, "globex")).raw_key
    return a, b


@pytest.fixture(scope="module")
def client(env, keys):
    with in_process_api() as c:
        yield c


def submit(client, key, **body):
    body.setdefault("document", "The vault code is 4711.")
    return client.post("/v1/jobs", json=body, headers={"X-API-Key": key})


def test_missing_and_bad_keys_are_401(client):
    assert client.post("/v1/jobs", json={"document": "x"}).status_code == 401
    r = client.post("/v1/jobs", json={"document": "x"}, headers={"X-API-Key": "namm_nope"})
    assert r.status_code == 401
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs/abc", headers={"X-API-Key": "wrong"}).status_code == 401


def test_a_submission_with_an_unknown_key_hears_401_whatever_its_body(client, keys):
    """A small body's key is checked by the inference worker in its batch, a large one's before
    the body is read (service/api/auth.py); an unknown key hears 401 either way, also where a
    known key would hear 415, 400 or 413. The worker's verdict is remembered in the API
    process, so the same key is refused there next time."""
    import uuid

    from service.api.auth import key_cache
    from service.api.keys import hash_key

    def post(key: str, body: bytes, content_type: str = "application/json"):
        return client.post("/v1/jobs", content=body,
                           headers={"X-API-Key": key, "Content-Type": content_type})

    small = json.dumps({"document": "The vault code is 4711."}).encode()
    large = json.dumps({"document": "a" * 400_000}).encode()  # over the deferred-auth size
    cases = [(small, "application/json", 202), (small, "text/plain", 415),
             (b"{not json", "application/json", 400), (large, "application/json", 413)]
    for body, content_type, known_key_status in cases:
        unknown = f"namm_{uuid.uuid4().hex}"
        r = post(unknown, body, content_type)
        assert r.status_code == 401, (content_type, len(body), r.text)
        assert r.headers["www-authenticate"] == "APIKey"
        assert "invalid or revoked" in r.json()["detail"]
        assert key_cache().get(hash_key(unknown)) == (True, None)
        assert post(keys[0], body, content_type).status_code == known_key_status


def test_a_small_submission_costs_the_api_process_no_key_lookup(client, keys, monkeypatch):
    """The lookup per request was the largest cost of a submission under load
    (docs/benchmarks-service.md): a small body's key is checked in the inference worker's batch
    query, a large body's in the API process before it is read, other routes' per request."""
    from service.api import auth

    looked_up: list[str] = []
    real = auth._lookup_tenant
    monkeypatch.setattr(auth, "_lookup_tenant", lambda digest: looked_up.append(digest) or real(digest))
    assert submit(client, keys[0]).status_code == 202
    assert looked_up == []
    large = json.dumps({"document": "a" * 300_000}).encode()  # over 256 KiB and this module's limit
    r = client.post("/v1/jobs", content=large,
                    headers={"X-API-Key": keys[0], "Content-Type": "application/json"})
    assert r.status_code == 413 and len(looked_up) == 1  # looked up first, then refused
    assert client.get("/v1/jobs", headers={"X-API-Key": keys[0]}).status_code == 200
    assert len(looked_up) == 2


def test_submit_json_stores_job_and_enqueues(client, keys):
    from service.core.queue import queue_depths

    before = queue_depths(("gpu",))["gpu"]
    r = submit(client, keys[0], questions=["What is the vault code?"], policy="h2o", budget=0.5,
               max_new_tokens=16)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued"
    assert queue_depths(("gpu",))["gpu"] == before + 1  # the message is in the real broker
    job = client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": keys[0]}).json()
    assert job["status"] == "queued" and job["kind"] == "answer" and job["policy"] == "h2o"
    assert job["budget"] == {"fraction": 0.5} and job["max_new_tokens"] == 16
    assert job["progress"] == 0.0
    assert job["document"]["chars"] == len("The vault code is 4711.")
    assert job["created_at"].endswith(("Z", "+00:00"))  # UTC, also on SQLite


def test_other_tenants_get_404(client, keys):
    job_id = submit(client, keys[0]).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": keys[1]}).status_code == 404
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers={"X-API-Key": keys[1]})
    assert r.status_code == 404
    ids = [j["id"] for j in client.get("/v1/jobs", headers={"X-API-Key": keys[1]}).json()["items"]]
    assert job_id not in ids


def test_multipart_upload_html_and_pdf(client, keys):
    from service.dev.sample_pdf import text_pdf

    html = b"<html><body><p>The vault code is <b>4711</b>.</p><script>x()</script></body></html>"
    r = client.post("/v1/jobs", headers={"X-API-Key": keys[0]},
                    files={"file": ("page.html", io.BytesIO(html), "text/html")},
                    data={"kind": "extract", "instruction": "List every number.",
                          "policy": "snapkv", "budget": "0.3", "max_new_tokens": "20"})
    assert r.status_code == 202, r.text
    job = client.get(r.json()["url"], headers={"X-API-Key": keys[0]}).json()
    assert job["kind"] == "extract" and job["budget"] == {"fraction": 0.3}
    assert job["max_new_tokens"] == 20
    assert job["document"]["content_type"] == "text/html"
    r = client.post("/v1/jobs", headers={"X-API-Key": keys[0]},
                    files={"file": ("r.pdf", io.BytesIO(text_pdf("Revenue 5")), "application/pdf")},
                    data={"questions": json.dumps(["What was the revenue?", "Which year?"])})
    assert r.status_code == 202, r.text
    job = client.get(r.json()["url"], headers={"X-API-Key": keys[0]}).json()
    assert job["questions"] == ["What was the revenue?", "Which year?"]
    assert job["document"]["content_type"] == "application/pdf"


@pytest.mark.parametrize("kwargs, status, words", [
    ({"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "empty"),
    ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ({"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}}, 422, "object"),
    ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ({"content": b"hello"}, 415, "Content-Type"),
    ({"json": {"document": "x", "policy": "bogus"}}, 422, "valid policies: full, surprisal, namm"),
    ({"json": {"document": "x", "budget": 1.5}}, 422, "budget"),
    ({"json": {"document": "x", "budget": 0}}, 422, "budget"),
    ({"json": {"document": "x", "budget": 2048}}, 422, "ambiguous"),
    ({"json": {"document": "x", "budget": True}}, 422, "budget"),
    ({"json": {"document": "x", "budget": {"tokens": 0}}}, 422, "budget"),
    ({"json": {"document": "x", "budget": {"tokens": 8, "fraction": 0.5}}}, 422, "one key"),
    ({"data": {"budget": "2048"}, "files": {"file": ("a.txt", b"x", "text/plain")}}, 422,
     "ambiguous"),
    ({"json": {"document": "x", "kind": "answer"}}, 422, "question"),
    ({"json": {"document": "x", "kind": "extract"}}, 422, "instruction"),
    ({"json": {"document": "x", "max_new_tokens": 100000}}, 422, "max_new_tokens"),
    ({"json": {"document": "x", "surprise": 1}}, 422, "surprise"),
    ({"json": {"document": "   "}}, 422, "empty"),
    ({"json": {"questions": ["q"]}}, 422, "document"),
    ({"json": {"document": "x" * 20001}}, 413, "limit"),
    ({"files": {"file": ("a.txt", b"caf\xe9", "text/plain")}}, 422, "UTF-8"),
    ({"files": {"file": ("a.pdf", b"%PDF-1.4 broken", "application/pdf")}}, 422, "PDF"),
    ({"files": {"file": ("a.png", b"\x89PNG", "image/png")}}, 415, "unsupported"),
    ({"files": {"file": ("a.txt", b"", "text/plain")}}, 422, "empty"),
    ({"data": {"policy": "surprisal"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, 422, "file"),
    ({"content": b"--xx\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=xx"}},
     None, None),
])
def test_bad_input_is_4xx_with_a_message(client, keys, kwargs, status, words):
    headers = {"X-API-Key": keys[0], **kwargs.pop("headers", {})}
    r = client.post("/v1/jobs", headers=headers, **kwargs)
    if status is None:  # malformed multipart: any 4xx, never a 500
        assert 400 <= r.status_code < 500, r.text
        return
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["detail"].lower()


@pytest.mark.parametrize("body, stored", [
    ({"budget": {"tokens": 1}}, {"tokens": 1}),  # one token stays one token
    ({"budget": {"fraction": 1}}, {"fraction": 1.0}),
    ({"budget": 1}, {"fraction": 1.0}),  # a plain number is a fraction
    ({"policy": "h2o"}, {"fraction": 0.25}),  # the baselines' default (namm.spec)
    ({"policy": "full", "budget": {"tokens": 64}}, None),  # the full cache keeps everything
])
def test_budget_is_stored_with_its_unit(client, keys, body, stored):
    r = submit(client, keys[0], **body)
    assert r.status_code == 202, r.text
    job = client.get(r.json()["url"], headers={"X-API-Key": keys[0]}).json()
    assert job["budget"] == stored


def test_surprisal_defaults_to_the_shipped_checkpoint_budget(client, keys):
    from namm.checkpoints import default_checkpoint
    from namm.spec import checkpoint_budget

    shipped = checkpoint_budget(default_checkpoint(None)).to_json()  # read from the file itself
    for body in ({}, {"budget": None}):
        r = submit(client, keys[0], policy="surprisal", **body)
        job = client.get(r.json()["url"], headers={"X-API-Key": keys[0]}).json()
        assert job["budget"] == shipped
    r = client.post("/v1/jobs", headers={"X-API-Key": keys[0]},
                    files={"file": ("a.txt", b"text", "text/plain")},
                    data={"budget": '{"tokens": 64}'})
    assert r.status_code == 202, r.text
    assert client.get(r.json()["url"], headers={"X-API-Key": keys[0]}).json()["budget"] == \
        {"tokens": 64}


def test_the_default_policy_is_surprisal_the_shipped_memory(client, keys):
    from service.core.settings import Settings

    assert Settings().defaults.policy == "surprisal"
    r = submit(client, keys[0])  # no policy named
    assert r.status_code == 202, r.text
    assert client.get(r.json()["url"], headers={"X-API-Key": keys[0]}).json()["policy"] == "surprisal"


def test_namm_without_a_trained_scorer_is_a_422_naming_surprisal(client, keys):
    for body in ({"policy": "namm"}, {"policy": "namm", "budget": {"fraction": 0.5}}):
        r = submit(client, keys[0], **body)
        assert r.status_code == 422, r.text
        assert "no trained NAMM attention scorer ships for" in r.text and "use policy 'surprisal'" in r.text
    r = client.post("/v1/jobs", headers={"X-API-Key": keys[0]}, files={"file": ("a.txt", b"text", "text/plain")},
                    data={"policy": "namm"})
    assert r.status_code == 422 and "use policy 'surprisal'" in r.text


def test_list_paging_status_filter_and_cancel(client, keys):
    key = keys[1]
    ids = [submit(client, key).json()["id"] for _ in range(3)]
    page = client.get("/v1/jobs?limit=2", headers={"X-API-Key": key}).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["items"][0]["id"] == ids[-1]
    rest = client.get("/v1/jobs?limit=2&offset=2", headers={"X-API-Key": key}).json()
    assert [j["id"] for j in rest["items"]] == [ids[0]]
    cancelled = client.post(f"/v1/jobs/{ids[0]}/cancel", headers={"X-API-Key": key}).json()
    assert cancelled["status"] == "cancelled"
    only = client.get("/v1/jobs?status=cancelled", headers={"X-API-Key": key}).json()
    assert [j["id"] for j in only["items"]] == [ids[0]]
    assert client.get("/v1/jobs?status=bogus", headers={"X-API-Key": key}).status_code == 422


def test_health_metrics_and_docs(client, keys):
    health = client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["checks"] == {"database": True, "broker": True, "api_workers": True}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": keys[0]}).status_code == 401
    metrics = client.get("/metrics", headers={"X-API-Key": "operator-secret"}).text
    assert 'namm_jobs{status="queued"}' in metrics
    assert 'namm_queue_depth{queue="gpu"}' in metrics
    assert "namm_http_request_duration_seconds_bucket" in metrics
    assert "namm_kv_kept_fraction_bucket" in metrics and "namm_job_duration_seconds" in metrics
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/jobs"]["post"]
    assert {"application/json", "multipart/form-data"} <= set(post["requestBody"]["content"])
    assert "/v1/jobs/{job_id}/cancel" in spec["paths"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    budget = json.dumps(body["properties"]["budget"])
    assert '"fraction"' in budget and '"tokens"' in budget and "ambiguous" in budget
    assert client.get("/docs").status_code == 200


def test_keys_are_hashed_at_rest(client, keys):
    from sqlalchemy import select

    from service.core.db import session_scope
    from service.api.keys import hash_key
    from service.models import ApiKey

    with session_scope() as s:
        stored = set(s.scalars(select(ApiKey.key_hash)))
    assert keys[0] not in stored and hash_key(keys[0]) in stored


def test_database_errors_are_503_from_one_handler(client, keys, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from service.jobs.repository import JobRepository

    def down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    job_id = submit(client, keys[0]).json()["id"]
    monkeypatch.setattr(JobRepository, "get", down)
    monkeypatch.setattr(JobRepository, "page", down)
    for path in (f"/v1/jobs/{job_id}", "/v1/jobs"):
        r = client.get(path, headers={"X-API-Key": keys[0]})
        assert r.status_code == 503 and "retry" in r.json()["detail"], r.text
