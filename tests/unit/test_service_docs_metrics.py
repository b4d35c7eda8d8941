"""Issue 13: /docs works without internet (every asset it names is served by the API), and
namm_queue_depth counts the jobs still waiting, not the messages of cancelled ones."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start

from service.core.state import reset_process_state


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs-metrics")
    mp = pytest.MonkeyPatch()
    mp.setenv("NAMM_DATABASE__URL", f"sqlite:///{tmp / 'namm.db'}")
    mp.setenv("NAMM_BROKER__URL", f"sqla+sqlite:///{tmp / 'broker.db'}")
    mp.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    mp.delenv("NAMM_API__METRICS_KEY", raising=False)
    reset_process_state()
    from service.api.app import build_server
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core import migrate
    from service.core.db import session_scope

    migrate.upgrade()
    with session_scope() as s:
        key = issue_key(s, get_or_create_tenant(s, "acme")).raw_key
    with wrap_litserve_start(build_server()) as srv, TestClient(srv.app) as c:
        c.headers["X-API-Key"] = key
        yield c
    mp.undo()
    reset_process_state()


def test_docs_page_loads_only_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", page.text)
    urls = {a or b for a, b in urls}
    assert urls, page.text
    for url in urls:
        assert url.startswith("/"), f"/docs loads {url} from elsewhere"
        asset = client.get(url)
        assert asset.status_code == 200, url
    assert "swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text
    assert client.get("/redoc").status_code == 404  # it loaded its script from a CDN


def _metric(text: str, name: str, label: str) -> float:
    match = re.search(rf'^{name}{{queue="{label}"}} ([0-9.e+]+)$', text, re.M)
    assert match, text
    return float(match.group(1))


def test_queue_depth_counts_waiting_jobs_not_cancelled_messages(client):
    from service.api.metrics import _job_stats

    ids = [client.post("/v1/jobs", json={"document": f"doc {i}"}).json()["id"] for i in range(5)]
    for job_id in ids[:3]:
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    _job_stats.forget()
    text = client.get("/metrics").text
    # 5 messages wait in the broker, 3 of them for cancelled jobs: 2 jobs wait
    assert _metric(text, "namm_broker_messages", "gpu") == 5
    assert _metric(text, "namm_queue_depth", "gpu") == 2
