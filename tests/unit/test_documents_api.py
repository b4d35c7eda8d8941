"""/v1/documents in-process (LitServe app, SQLite, kombu's SQLAlchemy broker on a SQLite file),
without a worker: what is stored and answered at once. Reading and answering with the real model
are in tests/model/test_documents_worker.py; the whole journey with a real worker process in
tests/integration/test_documents_embedded.py."""

from __future__ import annotations

import pytest

from tests.sqlite_service import in_process_api, sqlite_service

DOC = {"document": "The vault code is 4711. The office is in Lyon.", "filename": "memo.txt"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with sqlite_service(tmp_path_factory.mktemp("documents-api"), NAMM_MEMORIES__MAX_TENANT_BYTES="1000") as tmp:
        yield tmp


@pytest.fixture(scope="module")
def keys(env):
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope

    with session_scope() as s:
        return (issue_key(s, get_or_create_tenant(s, "acme")).raw_key,
                issue_key(s, get_or_create_tenant(s, "globex")).raw_key)


@pytest.fixture(scope="module")
def client(env, keys):
    with in_process_api(default_key=keys[0]) as c:
        yield c


def row(document_id):
    from service.core.db import session_scope
    from service.models import StoredDocument

    with session_scope() as s:
        r = s.get(StoredDocument, document_id)
        s.expunge_all()
        return r


def job(job_id):
    from service.core.db import session_scope
    from service.models import Job

    with session_scope() as s:
        j = s.get(Job, job_id)
        s.expunge_all()
        return j


def test_store_then_read_it_back(client):
    r = client.post("/v1/documents", json={**DOC, "policy": "surprisal", "budget": {"tokens": 64}})
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["status"] == "reading" and doc["policy"] == "surprisal"
    assert doc["budget"] == {"tokens": 64} and doc["filename"] == "memo.txt"
    assert doc["bytes_stored"] == 0 and doc["tokens"] is None
    assert doc["questions_url"] == f"/v1/documents/{doc['id']}/questions"
    read_job = client.get(doc["read_job"]).json()  # the read is an ordinary job of kind read
    assert read_job["kind"] == "read" and read_job["status"] == "queued"
    assert read_job["stored_document"] == f"/v1/documents/{doc['id']}"
    assert client.get(f"/v1/documents/{doc['id']}").json() == doc
    page = client.get("/v1/documents", params={"limit": 1}).json()
    assert page["total"] >= 1 and page["limit"] == 1 and len(page["items"]) == 1


def test_multipart_upload_is_a_document_too(client):
    r = client.post("/v1/documents", files={"file": ("notes.md", b"# Notes\n\nShip on Friday.", "text/markdown")},
                    data={"policy": "streaming_llm", "budget": "0.5"})
    assert r.status_code == 202, r.text
    assert r.json()["content_type"] == "text/markdown" and r.json()["budget"] == {"fraction": 0.5}


def test_a_question_on_a_document_being_read_waits_for_the_read(client):
    doc = client.post("/v1/documents", json=DOC).json()
    r = client.post(f"/v1/documents/{doc['id']}/questions", json={"questions": ["What is the code?"]})
    assert r.status_code == 202, r.text
    asked = r.json()
    assert asked["status"] == "waiting" and asked["url"] == f"/v1/jobs/{asked['id']}"
    stored = job(asked["id"])
    assert stored.memory_id == doc["id"] and stored.questions == ["What is the code?"]
    assert stored.document_id == row(doc["id"]).document_id  # the text is not copied
    assert stored.policy == doc["policy"]  # answered with the policy it was read with

    # a quota release (after any job of the tenant ends) must not send it before the read
    from service.core.db import session_scope
    from service.core.settings import get_settings
    from service.jobs import admission

    with session_scope() as s:
        released = admission.release(s, job(asked["id"]).tenant_id, get_settings().quotas)
    assert asked["id"] not in released and job(asked["id"]).status == "waiting"


def test_another_tenants_document_is_missing(client, keys):
    doc = client.post("/v1/documents", json=DOC).json()
    other = {"X-API-Key": keys[1]}
    assert client.get(f"/v1/documents/{doc['id']}", headers=other).status_code == 404
    assert client.post(f"/v1/documents/{doc['id']}/questions", json={"questions": ["x?"]},
                       headers=other).status_code == 404
    assert client.delete(f"/v1/documents/{doc['id']}", headers=other).status_code == 404
    assert doc["id"] not in [d["id"] for d in client.get("/v1/documents", headers=other).json()["items"]]
    assert client.get("/v1/documents/not-a-uuid").status_code == 404


def test_idempotency_key_answers_the_first_document_and_refuses_another_body(client):
    headers = {"Idempotency-Key": "doc-key-1"}
    first = client.post("/v1/documents", json=DOC, headers=headers)
    again = client.post("/v1/documents", json=DOC, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/documents", json={**DOC, "document": "Another text."}, headers=headers)
    assert other.status_code == 409
    # the same key on POST /v1/jobs with the same body is another request
    assert client.post("/v1/jobs", json=DOC, headers=headers).status_code == 409
    doc_id = first.json()["id"]
    q_headers = {"Idempotency-Key": "question-key-1"}
    q1 = client.post(f"/v1/documents/{doc_id}/questions", json={"questions": ["Where?"]}, headers=q_headers)
    q2 = client.post(f"/v1/documents/{doc_id}/questions", json={"questions": ["Where?"]}, headers=q_headers)
    assert q1.status_code == q2.status_code == 202 and q1.json()["id"] == q2.json()["id"]
    assert client.post(f"/v1/documents/{doc_id}/questions", json={"questions": ["Who?"]},
                       headers=q_headers).status_code == 409


@pytest.mark.parametrize("body, status, words", [
    ({"document": "   "}, 422, "document"),
    ({**DOC, "policy": "nope"}, 422, "policy"),
    ({**DOC, "questions": ["x"]}, 422, "questions"),  # questions go to /questions
    ({**DOC, "budget": 7}, 422, "budget"),
    ({"document": "a\u0000b"}, 422, "document"),
])
def test_bad_documents_are_refused_with_a_message(client, body, status, words):
    r = client.post("/v1/documents", json=body)
    assert r.status_code == status, r.text
    assert words in r.text


@pytest.mark.parametrize("body, status", [
    ('{"questions": [""]}', 422), ('{"questions": "What?"}', 422), ('{"max_new_tokens": 0}', 422),
    ('{"questions": ["x"], "kind": "answer"}', 422), ('[]', 422), ('{"questions": ["a\\ud800b"]}', 422),
    ('{"questions": ["a\\u0000b"]}', 422),
])
def test_bad_questions_are_refused(client, body, status):
    doc = client.post("/v1/documents", json=DOC).json()
    r = client.post(f"/v1/documents/{doc['id']}/questions", content=body.encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert client.post(f"/v1/documents/{doc['id']}/questions", content=b"{",
                       headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post(f"/v1/documents/{doc['id']}/questions", content=b"x",
                       headers={"Content-Type": "text/plain"}).status_code == 415


def test_a_failed_read_fails_its_questions_and_refuses_new_ones(client):
    doc = client.post("/v1/documents", json=DOC).json()
    waiting = client.post(f"/v1/documents/{doc['id']}/questions", json={"questions": ["Code?"]}).json()
    read_job = row(doc["id"]).read_job_id
    assert client.post(f"/v1/jobs/{read_job}/cancel").status_code == 200
    after = client.get(f"/v1/documents/{doc['id']}").json()
    assert after["status"] == "failed" and "cancelled" in after["error"]
    assert job(waiting["id"]).status == "queued"  # released: its worker fails it with the reason
    r = client.post(f"/v1/documents/{doc['id']}/questions", json={"questions": ["Code?"]})
    assert r.status_code == 409 and "could not be read" in r.json()["detail"]


def test_delete_forgets_the_text_and_cancels_waiting_questions(client):
    doc = client.post("/v1/documents", json=DOC).json()
    waiting = client.post(f"/v1/documents/{doc['id']}/questions", json={"questions": ["Code?"]}).json()
    document_id = row(doc["id"]).document_id
    assert client.delete(f"/v1/documents/{doc['id']}").status_code == 204
    assert client.get(f"/v1/documents/{doc['id']}").status_code == 404
    assert client.delete(f"/v1/documents/{doc['id']}").status_code == 404
    assert job(waiting["id"]).status == "cancelled"
    from service.core.db import session_scope
    from service.models import Document

    with session_scope() as s:
        assert s.get(Document, document_id).text == ""


def test_storage_quota_refuses_new_documents_with_403(client):
    from sqlalchemy import update

    from service.core.db import session_scope
    from service.models import StoredDocument

    doc = client.post("/v1/documents", json=DOC).json()
    with session_scope() as s:  # as if its read had stored 1000 bytes (the quota, env fixture)
        s.execute(update(StoredDocument).where(StoredDocument.id == doc["id"]).values(bytes_stored=1000))
    r = client.post("/v1/documents", json=DOC)
    assert r.status_code == 403 and "storage quota" in r.json()["detail"]
    assert client.delete(f"/v1/documents/{doc['id']}").status_code == 204
    assert client.post("/v1/documents", json=DOC).status_code == 202


def test_active_jobs_quota_counts_reads(client):
    from service.core.db import session_scope
    from service.jobs.quotas import active_jobs, set_limits
    from service.models import Tenant

    with session_scope() as s:
        tenant = s.query(Tenant).filter_by(name="acme").one()
        set_limits(s, tenant.id, max_active_jobs=active_jobs(s, tenant.id), max_tokens_per_day=None)
    try:
        r = client.post("/v1/documents", json=DOC)
        assert r.status_code == 429 and r.headers["Retry-After"]
    finally:
        with session_scope() as s:
            set_limits(s, tenant.id, max_active_jobs=None, max_tokens_per_day=None)
