"""Retention maps through the service's worker on the real model (SmolLM2-135M, CPU): a job asked
with retention: true stores, with its result, the map namm.retention gives for the memory as
reading left it, and its answers and figures are those of a job without the map; the API serves
it to the tenant only."""

from __future__ import annotations

import pytest

import namm
from tests.sqlite_service import sqlite_service

pytestmark = pytest.mark.model

DOC = " ".join(f"Depot {i} stores {17 * i % 89} barrels of {['oil', 'wine', 'grain'][i % 3]}." for i in range(40)) \
    + " The vault code is 4711."


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with sqlite_service(tmp_path_factory.mktemp("retention-service"), NAMM_WORKER__PROGRESS_INTERVAL_S="0",
                        NAMM_MODEL__N_UP="128") as tmp:
        yield tmp


def _job(retention: bool) -> str:
    from service.api.keys import get_or_create_tenant
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository, NewJob

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        return JobRepository(s).create([NewJob(
            tenant_id=tenant.id, text=DOC, content_type="text/plain", size_bytes=len(DOC), filename=None,
            kind="answer", instruction=None, questions=["What is the vault code?"], policy="surprisal",
            budget=namm.Budget.tokens(96), max_new_tokens=8, retention=retention)])[0]


def _result(job_id):
    from sqlalchemy.orm import undefer

    from service.core.db import session_scope
    from service.models import Job, Result

    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.status == "done", job.error
        result = s.query(Result).options(undefer(Result.retention)).filter_by(job_id=job_id).one()
        s.expunge_all()
        return result, job


def test_the_worker_stores_the_map_of_the_memory_as_read(env, lm):
    from workers.runner import run_job

    with_map, without = _job(True), _job(False)
    for job_id in (with_map, without):
        assert run_job(job_id, load_model=lambda: lm, generate=namm.generate) == "done"
    result, _ = _result(with_map)
    plain, _ = _result(without)
    # a one-question job reads its document with the question first (NAMM_MODEL__QUERY_AWARE_MAX_QUESTIONS)
    question, maps = "What is the vault code?", []
    namm.generate(lm, namm.GenerationRequest(DOC, questions=(question,), policy="surprisal", max_new_tokens=8,
                                             budget=namm.Budget.tokens(96), n_up=128, query_aware=True),
                  on_read=lambda memory: maps.append(namm.retention.document_retention(memory, DOC, question=question)))
    expected = maps[0]
    assert result.retention == expected.to_json()
    assert "".join(p for p, _ in result.retention) == DOC.strip()
    assert 0 < expected.mean_share < 1  # the memory forgot some of it
    assert plain.retention is None
    assert result.stats["query_aware"] is True  # the job says how its document was read
    assert result.answers == plain.answers  # the map changes nothing about the job
    for key in ("tokens_in", "tokens_out", "kv_token_steps", "kv_bytes_peak"):
        assert result.stats[key] == plain.stats[key], key


def test_the_api_serves_the_map_to_its_tenant_only(env, lm):
    from fastapi.testclient import TestClient
    from litserve.utils import wrap_litserve_start

    from service.api.app import build_server
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope
    from workers.runner import run_job

    job_id = _job(True)
    assert run_job(job_id, load_model=lambda: lm, generate=namm.generate) == "done"
    with session_scope() as s:
        mine, other = issue_key(s, get_or_create_tenant(s, "acme")).raw_key, \
            issue_key(s, get_or_create_tenant(s, "globex")).raw_key
    with wrap_litserve_start(build_server()) as srv, TestClient(srv.app) as c:
        job = c.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": mine}).json()
        assert job["retention"] == f"/v1/jobs/{job_id}/retention"
        body = c.get(job["retention"], headers={"X-API-Key": mine}).json()
        assert body["tokens"] == len(body["pieces"]) and 0 < body["mean_share"] < 1
        assert "".join(p for p, _ in body["pieces"]) == DOC.strip()
        assert c.get(job["retention"], headers={"X-API-Key": other}).status_code == 404
        plain = _job(False)
        refused = c.get(f"/v1/jobs/{plain}/retention", headers={"X-API-Key": mine})
        assert refused.status_code == 409 and "retention: true" in refused.json()["detail"]
        page = c.get(f"/dashboard/jobs/{job_id}")
        assert page.status_code == 200 and "job.js" in page.text
