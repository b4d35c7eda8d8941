"""Issue 13 in-process: text a database refuses is named with its offset, PDFs are parsed in a
bounded child process, a batch that the database refuses is stored item by item, and
Idempotency-Key rows expire. Over HTTP, concurrently, on SQLite and PostgreSQL:
tests/integration/test_isolation.py."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from pdf_samples import NESTED_ARRAYS, UNKNOWN_FILTER

from service.api.documents import DocumentError, pdf_to_text
from service.api.text_checks import bad_character, check_text, check_tree, normalise_extracted
from service.dev.sample_pdf import text_pdf
from tests.sqlite_service import sqlite_service


def test_bad_characters_are_named_with_their_offset():
    assert bad_character("fine – text") is None
    assert bad_character("ab\ud800c") == (2, "a lone surrogate (U+D800)")
    assert bad_character("a\x00b\udc00") == (1, "a NUL character (U+0000)")
    assert bad_character("ab\udc00\x00") == (2, "a lone surrogate (U+DC00)")
    with pytest.raises(HTTPException) as err:
        check_tree({"document": "ok", "questions": ["fine", "x\x00"]})
    assert err.value.status_code == 422
    assert err.value.detail.startswith("questions[1]: a NUL character (U+0000) at character "
                                       "offset 1")
    with pytest.raises(HTTPException) as err:
        check_tree({"budget": {"t\ud800": 1}})
    assert "budget (a key)" in err.value.detail
    with pytest.raises(HTTPException):
        check_text("filename", "\udc80.txt")
    assert normalise_extracted("a\x00b\udc80c") == "ab\ufffdc"


def test_pdfs_are_parsed_in_a_bounded_child():
    assert "Revenue 5" in pdf_to_text(text_pdf("Revenue 5"))
    for pdf in (UNKNOWN_FILTER, NESTED_ARRAYS):  # NotImplementedError, RecursionError in pypdf
        with pytest.raises(DocumentError) as err:
            pdf_to_text(pdf)
        assert err.value.status_code == 422
    with pytest.raises(DocumentError) as err:  # the memory limit: pypdf cannot even load
        pdf_to_text(text_pdf("x"), memory_mb=16)
    assert err.value.status_code == 422
    with pytest.raises(DocumentError) as err:  # the wall-clock limit
        pdf_to_text(text_pdf("x"), timeout_s=0.001)
    assert err.value.status_code == 422 and "within" in err.value.message


@pytest.fixture()
def database(tmp_path):
    from service.api.keys import get_or_create_tenant
    from service.core.db import session_scope

    with sqlite_service(tmp_path):
        with session_scope() as s:
            tenant = get_or_create_tenant(s, "acme").id
        yield tenant


def _job(tenant_id: int, **kw):
    from service.jobs.repository import NewJob

    fields = dict(tenant_id=tenant_id, text="a document", content_type="text/plain",
                  size_bytes=10, filename=None, kind="summarize", instruction=None)
    fields.update(kw)
    return NewJob(**fields)


def test_a_row_the_database_refuses_fails_alone(database):
    """Past the checks (a bug in them, say), the batch is stored again item by item."""
    from sqlalchemy import func, select

    from service.api.intake import Refusal, Submission, store
    from service.core.db import session_scope
    from service.core.settings import get_settings
    from service.models import Job

    items = [Submission(_job(database)) for _ in range(5)]
    items[2] = Submission(_job(database, filename="\udc80.txt"))  # SQLite's driver refuses it
    items.insert(4, Refusal.status(422, "refused before"))
    answers = store(items, get_settings())
    assert [a.get("status") if not isinstance(a, Refusal) else a["error"]["status_code"]
            for a in answers] == ["queued", "queued", 422, "queued", 422, "queued"]
    assert "database refused" in answers[2]["error"]["detail"]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 4


def test_a_batch_is_authenticated_before_its_bodies_are_read(database):
    """A small submission reaches the inference worker with its key's sha256 (service/api/
    auth.py); `admit` finds every tenant of the batch at once, and an unknown or revoked key is
    a 401 whatever its body, before anything is validated or stored."""
    import json

    from sqlalchemy import func, select

    from service.api.intake import Refusal, admit
    from service.api.keys import get_or_create_tenant, hash_key, issue_key, revoke_keys
    from service.core.db import session_scope
    from service.core.settings import get_settings
    from service.models import Job

    with session_scope() as s:
        valid = issue_key(s, get_or_create_tenant(s, "acme")).raw_key
        revoked = issue_key(s, get_or_create_tenant(s, "gone")).raw_key
        revoke_keys(s, get_or_create_tenant(s, "gone"))

    def payload(key: str | None, body: bytes = b'{"document": "The code is 4711."}') -> dict:
        who = {"tenant_id": database} if key is None else {"key_sha256": hash_key(key)}
        return {**who, "format": "json", "idempotency_key": None, "body": body}

    answers = admit([payload(valid), payload("namm_unknown"), payload(revoked),
                     payload(None), payload("namm_unknown", b"{not json"),
                     payload(valid, b"{not json")], get_settings())
    statuses = [a["error"]["status_code"] if isinstance(a, Refusal) else a["status"]
                for a in answers]
    assert statuses == ["queued", 401, 401, "queued", 401, 400]
    assert answers[1]["error"]["headers"] == {"WWW-Authenticate": "APIKey"}
    with session_scope() as s:
        jobs = s.scalars(select(Job)).all()
        assert len(jobs) == 2 and {j.tenant_id for j in jobs} == {database}
        assert s.scalar(select(func.count()).select_from(Job)) == 2
    assert json.dumps(answers).count("invalid or revoked API key") == 3


def test_idempotency_keys_expire(database):
    from service.api.intake import Submission, store
    from service.core.db import session_scope
    from service.core.settings import get_settings
    from service.jobs import idempotency

    settings = get_settings()
    first = store([Submission(_job(database), "k1", "a" * 64)], settings)[0]
    again = store([Submission(_job(database), "k1", "a" * 64)], settings)[0]
    assert again["id"] == first["id"]
    conflict = store([Submission(_job(database), "k1", "b" * 64)], settings)[0]
    assert conflict["error"]["status_code"] == 409
    with session_scope() as s:  # past the TTL the key is forgotten: a new job
        assert idempotency.find(s, database, "k1", "b" * 64, ttl_s=0) is None
    later = store([Submission(_job(database), "k1", "b" * 64)], settings)[0]
    assert later["id"] != first["id"]
    with session_scope() as s:
        assert idempotency.purge_expired(s, ttl_s=0) == 1


def test_a_deeply_nested_body_is_a_400(database):
    from service.api.intake import Refusal, decode
    from service.core.settings import get_settings

    for depth in (990, 100_000):  # past json.loads, or past the checks after it
        body = b'{"document": "x", "questions": ' + b"[" * depth + b"]" * depth + b"}"
        answer = decode({"tenant_id": database, "format": "json", "body": body},
                        get_settings())
        assert isinstance(answer, Refusal) and answer["error"]["status_code"] in (400, 422)


def test_idempotency_compares_the_request_not_its_spelling():
    from service.api.intake import request_sha256

    def form(fields, data=b"%PDF-1.4 x"):
        return {"format": "multipart", "fields": fields,
                "file": {"filename": "a.pdf", "content_type": "application/pdf", "data": data}}

    a = request_sha256(form({"kind": ["answer"], "questions": ["q1", "q2"]}))
    assert a == request_sha256(form({"questions": ["q1", "q2"], "kind": ["answer"]}))
    assert a != request_sha256(form({"kind": ["answer"], "questions": ["q2", "q1"]}))
    assert a != request_sha256(form({"kind": ["answer"], "questions": ["q1", "q2"]}, b"other"))
    body = {"format": "json", "body": b'{"document": "d", "policy": "surprisal"}'}
    assert request_sha256(body) == request_sha256(
        {"format": "json", "body": b'{ "policy":"surprisal",\n "document":"d" }'})
