"""The cost dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright):
the real API process on SQLite with the known usage records; sign in with a key, the four
charts have one point per day of the period with the right values, the tables list the models
and policies; a screenshot is kept in tests/artifacts/ (gitignored) as the test's artefact."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from report_seed import seed
from service.core.state import reset_process_state

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("NAMM_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/services does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core import migrate
    from service.core.db import session_scope
    from service.dev.processes import ServiceProcesses, api_command

    tmp = tmp_path_factory.mktemp("dashboard")
    env = {**os.environ, "NAMM_DATABASE__URL": f"sqlite:///{tmp / 'namm.db'}",
           "NAMM_BROKER__URL": f"sqla+sqlite:///{tmp / 'broker.db'}",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"), "NAMM_API__LOG_LEVEL": "warning"}
    mp = pytest.MonkeyPatch()
    for name in ("NAMM_DATABASE__URL", "NAMM_BROKER__URL"):
        mp.setenv(name, env[name])
    reset_process_state()
    migrate.upgrade()
    with session_scope() as s:
        acme = get_or_create_tenant(s, "acme")
        seed(s, acme.id, get_or_create_tenant(s, "globex").id)
        key = issue_key(s, acme).raw_key
    port = free_port()
    procs = ServiceProcesses(env=env, log_dir=tmp / "logs")
    try:
        procs.start("api", api_command(port, api_servers=1))
        procs.wait_healthy(f"http://127.0.0.1:{port}", timeout_s=120)
        yield f"http://127.0.0.1:{port}", key
    finally:
        procs.stop()
        mp.undo()
        reset_process_state()


CHART_DATA = """() => Object.fromEntries(Object.entries(window.nammCharts).map(([name, c]) =>
    [name, {labels: c.data.labels, series: Object.fromEntries(
        c.data.datasets.map(d => [d.label, d.data]))}]))"""


def test_dashboard_renders_the_report_in_chromium(api):
    from playwright.sync_api import sync_playwright

    url, key = api
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(f"{url}/dashboard?from=2026-03-09&to=2026-03-11&tz=UTC")
            page.fill("#api-key", "namm_wrong")
            page.click("#login button[type=submit]")
            page.wait_for_selector("#login-error:has-text('refused')")
            page.fill("#api-key", key)
            page.click("#login button[type=submit]")
            page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            login_hidden = page.is_hidden("#login")
            charts = page.evaluate(CHART_DATA)
            models = page.locator("#table-model tbody tr td:first-child").all_inner_texts()
            policies = page.locator("#table-policy tbody tr td:first-child").all_inner_texts()
            caption = page.inner_text("#cost-caption")
            loss = page.locator("#table-policy td.loss").all_inner_texts()
            stored = page.evaluate("() => sessionStorage.getItem('namm_api_key')")
            summary = page.inner_text("#summary")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"\ndashboard screenshot: {shot}")
    days = ["2026-03-09", "2026-03-10", "2026-03-11"]
    assert set(charts) == {"kv", "cost", "tokens", "status"}
    for name, chart in charts.items():
        assert chart["labels"] == days, name
        assert all(len(series) == 3 for series in chart["series"].values()), name
    assert charts["kv"]["series"]["kept (this service)"] == [400, 3100, 0]
    assert charts["kv"]["series"]["full cache"] == [1000, 3200, 0]
    # the last day's only job predates the usage migration: a cost, no full-cache figure
    assert charts["cost"]["series"]["cost, all jobs"] == [0.001, 0.0032, 0.0003]
    assert charts["cost"]["series"]["cost"] == [0.001, 0.0032, None]
    assert charts["cost"]["series"]["full cache (estimated)"] == [0.0016, 0.00315, None]
    assert charts["tokens"]["series"]["tokens in"] == [1000, 2500, 1000]
    assert charts["status"]["series"]["done"] == [1, 2, 1]
    assert charts["status"]["series"]["failed"] == [0, 1, 0]
    assert charts["status"]["series"]["queued"] == [0, 0, 1]
    assert "estimated" in caption
    assert models == ["m1", "m2", "total"] and policies == ["full", "h2o", "namm", "total"]
    assert loss == ["-0.000050 (estimated)"]
    assert stored == key and login_hidden
    assert "saved, measured on 1 full-cache rerun(s)" in summary and "$0.000900" in summary
    assert "1 of 1" in summary and "2.0 vs 3.0" in summary
    assert shot.stat().st_size > 10_000


CHART_SHAPE = """() => Object.fromEntries(Object.entries(window.nammCharts).map(([name, c]) =>
    [name, {type: c.config.type, labels: c.data.labels, offset: c.options.scales.x.offset,
            datasets: c.data.datasets.map(d => ({label: d.label, data: d.data, order: d.order || 0,
                                                  pointRadius: d.pointRadius}))}]))"""


def test_dashboard_is_readable_on_a_first_day_and_over_a_month(api):
    """Issue 23 item 16: one day of data is bars centred on the axis (not a lone point at the
    edge), a month is lines with visible markers, "cost" is drawn above "cost, all jobs", and the
    page (favicon included) loads with no console error and no failed request."""
    from playwright.sync_api import sync_playwright

    url, key = api
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-one-day.png"
    errors, failed, favicon = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("response", lambda r: favicon.append(r.status) if r.url.endswith("/favicon.ico") else None)
            page.goto(f"{url}/dashboard?from=2026-03-10&to=2026-03-10&tz=UTC")
            page.fill("#api-key", key)
            page.click("#login button[type=submit]")
            page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            one_day = page.evaluate(CHART_SHAPE)
            page.screenshot(path=str(shot), full_page=True)
            page.evaluate("() => { delete document.body.dataset.loaded; }")
            page.fill("#from", "2026-02-10")
            page.fill("#to", "2026-03-11")
            page.click("#filters button[type=submit]")
            page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            month = page.evaluate(CHART_SHAPE)
            page.screenshot(path=str(ARTIFACTS / "dashboard-month.png"), full_page=True)
            icon = page.request.get(f"{url}/favicon.ico")
            icon_type, icon_size = icon.headers["content-type"], len(icon.body())
        finally:
            browser.close()
    print(f"\ndashboard screenshots: {shot}, {ARTIFACTS / 'dashboard-month.png'}")
    for name, chart in one_day.items():
        assert chart["type"] == "bar" and chart["offset"] is True, name
        assert chart["labels"] == ["2026-03-10"], name
    assert one_day["kv"]["datasets"][0]["data"] == [3100]
    for name in ("kv", "cost"):
        assert month[name]["type"] == "line" and month[name]["offset"] is True
        assert len(month[name]["labels"]) == 30
        assert all(d["pointRadius"] >= 4 for d in month[name]["datasets"]), name
    cost = {d["label"]: d for d in month["cost"]["datasets"]}
    # a lower order is drawn later, on top: "cost" must not hide under "cost, all jobs"
    assert cost["cost"]["order"] < cost["cost, all jobs"]["order"]
    assert errors == [] and failed == []
    assert set(favicon) <= {200}  # headless Chromium may not ask; the request below does
    assert icon_type == "image/x-icon" and 0 < icon_size < 5000


def _seed_job_with_retention(pieces) -> str:
    """A done job of tenant acme whose result keeps a retention map (as the worker stores it)."""
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository, NewJob
    from service.models import Job, Result, Tenant, utcnow

    text = "".join(p for p, _ in pieces)
    with session_scope() as s:
        tenant = s.query(Tenant).filter_by(name="acme").one()
        job_id = JobRepository(s).create([NewJob(
            tenant_id=tenant.id, text=text, content_type="text/plain", size_bytes=len(text),
            filename="memo.txt", kind="answer", instruction=None, questions=["What is the code?"],
            policy="surprisal", retention=True)])[0]
        s.query(Job).filter_by(id=job_id).update({"status": "done", "finished_at": utcnow(), "progress": 1.0})
        s.add(Result(job_id=job_id, text="4711", answers=["4711"], stats={}, retention=pieces))
    return job_id


def test_job_page_shows_what_the_memory_kept(api):
    """Issue 21 item 5: a job asked with retention: true shows its document with forgotten text
    faded; the document's text is text (markup in it is not run); a screenshot is kept."""
    from playwright.sync_api import sync_playwright

    url, key = api
    pieces = [["The vault code", 1.0], [" is ", 0.5], ["4711", 1.0], [". Filler ", 0.0],
              ["<b>bold?</b>", 0.0], [" words.", 0.25]]
    job_id = _seed_job_with_retention(pieces)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "job-retention.png"
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/dashboard/jobs/{job_id}")
            page.fill("#api-key", key)
            page.click("#login button[type=submit]")
            page.wait_for_selector("#document span", timeout=30_000)
            spans = page.evaluate("""() => [...document.querySelectorAll('#document span')].map(s =>
                [s.textContent, Number(getComputedStyle(s).opacity), getComputedStyle(s).color])""")
            document_text = page.inner_text("#document")
            injected = page.evaluate("() => document.querySelector('#document b') !== null")
            answers = page.inner_text("#answers")
            summary = page.inner_text("#retention-summary")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"\njob page screenshot: {shot}")
    assert errors == []
    # neighbouring tokens with one share are drawn as one span
    assert [s[0] for s in spans] == ["The vault code", " is ", "4711", ". Filler <b>bold?</b>", " words."]
    opacity = {text: o for text, o, _ in spans}
    assert opacity["The vault code"] == 1.0 and opacity["4711"] == 1.0
    assert opacity[". Filler <b>bold?</b>"] == 0.25 and abs(opacity[" is "] - 0.625) < 1e-3
    assert spans[0][2] == "rgb(17, 17, 17)" and spans[3][2] == "rgb(170, 68, 68)"
    assert document_text == "".join(p for p, _ in pieces) and not injected
    assert "4711" in answers and "6 document tokens" in summary
    assert shot.stat().st_size > 5_000
