"""Issue 13: /docs works without internet (every asset it names is served by the API), and
namm_queue_depth counts the jobs still waiting, not the messages of cancelled ones."""

from __future__ import annotations

import re

import pytest

from tests.sqlite_service import in_process_api, sqlite_service


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope

    with sqlite_service(tmp_path_factory.mktemp("docs-metrics"), NAMM_API__METRICS_KEY=None):
        with session_scope() as s:
            key = issue_key(s, get_or_create_tenant(s, "acme")).raw_key
        with in_process_api(default_key=key) as c:
            yield c


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
