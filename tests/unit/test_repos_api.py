"""/v1/batches and /v1/schedules in-process (LitServe app, SQLite, kombu's SQLAlchemy broker on
a SQLite file): auth, validation (every refusal a 4xx with a message, nothing stored), hostile
archives, tenancy, paging bounds, report formats, cancel, schedules CRUD, OpenAPI."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from tests.sqlite_service import in_process_api, sqlite_service


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch-api")
    root = tmp / "repos"
    (root / "demo" / "pkg").mkdir(parents=True)
    (root / "demo" / "pkg" / "a.py").write_text("X = 1\n")
    with sqlite_service(tmp, NAMM_BATCHES__ALLOWED_ROOTS=f'["{root}"]',
                        NAMM_BATCHES__MAX_ARCHIVE_BYTES="200000",
                        NAMM_BATCHES__MAX_UNPACKED_BYTES="1000000"):
        yield root


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


def tar_gz(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def batch_count() -> int:
    from sqlalchemy import func, select

    from service.core.db import session_scope
    from service.models import Batch

    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Batch))


def test_keys_are_required(client):
    assert client.get("/v1/batches", headers={"X-API-Key": "nope"}).status_code == 401
    assert client.post("/v1/schedules", json={}, headers={"X-API-Key": ""}).status_code == 401


def test_path_source_is_stored_and_ingestion_enqueued(client, env, keys):
    from service.core.queue import queue_depths

    before = queue_depths(("cpu",))["cpu"]
    r = client.post("/v1/batches", json={"source": {"kind": "path", "path": str(env / "demo")},
                                         "policy": "surprisal", "budget": 0.25, "max_new_tokens": 8})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    assert queue_depths(("cpu",))["cpu"] == before + 1
    b = client.get(f"/v1/batches/{batch_id}").json()
    assert b["status"] == "queued" and b["budget"] == {"fraction": 0.25}
    assert b["tasks"] == ["summaries", "overview"] and b["progress"]["files_total"] == 0
    assert client.get(f"/v1/batches/{batch_id}",
                      headers={"X-API-Key": keys[1]}).status_code == 404
    page = client.get("/v1/batches", params={"limit": 1}).json()
    assert page["total"] >= 1 and len(page["items"]) == 1
    md = client.get(f"/v1/batches/{batch_id}/report", params={"format": "md"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith(f"# Repository report: batch {batch_id}")
    js = client.get(f"/v1/batches/{batch_id}/report", params={"format": "json"})
    assert js.json()["id"] == batch_id and "attachment" in js.headers["content-disposition"]
    assert client.get(f"/v1/batches/{batch_id}/report",
                      params={"format": "pdf"}).status_code == 422
    cancelled = client.post(f"/v1/batches/{batch_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.post(f"/v1/batches/{batch_id}/cancel",
                       headers={"X-API-Key": keys[1]}).status_code == 404


@pytest.mark.parametrize("body,status,message", [
    ({"source": {"kind": "path", "path": "/etc"}}, 422, "not under an allowed root"),
    ({"source": {"kind": "git", "url": "ssh://host/r.git"}}, 422, "scheme"),
    ({"source": {"kind": "git", "url": "--upload-pack=touch /tmp/x"}}, 422, "option"),
    ({"source": {"kind": "git", "url": "file:///etc"}}, 422, "allowed root"),
    # SSRF: internal addresses are refused before anything is stored or cloned
    ({"source": {"kind": "git", "url": "https://169.254.169.254/latest/meta-data/"}}, 422,
     "link-local"),
    ({"source": {"kind": "git", "url": "https://127.0.0.1:6391/x.git"}}, 422, "loopback"),
    ({"source": {"kind": "git", "url": "https://2130706433/x.git"}}, 422, "loopback"),
    ({"source": {"kind": "git", "url": "https://[::ffff:10.0.0.1]/x.git"}}, 422, "private"),
    # the test settings admit no public host: a name is refused without a DNS lookup
    ({"source": {"kind": "git", "url": "https://github.com/a/b.git"}}, 422, "allow-list"),
    ({"source": {"kind": "ftp", "url": "x"}}, 422, "source"),
    ({"source": {"kind": "path", "path": "/x"}, "policy": "nope"}, 422, "policy"),
    ({"source": {"kind": "path", "path": "/x"}, "tasks": ["overview"]}, 422, "summaries"),
    ({"source": {"kind": "path", "path": "/x"}, "budget": 7}, 422, "budget"),
    ({"source": {"kind": "path", "path": "/x"}, "surprise": 1}, 422, "surprise"),
    ({"source": {"kind": "path", "path": "/x"}, "questions": ["  "]}, 422, "empty"),
    ({"source": {"kind": "path", "path": "/x"}, "questions": ["x" * 2001]}, 422, "2000"),
    ({}, 422, "source"),
])
def test_bad_json_submissions_are_4xx_and_store_nothing(client, body, status, message):
    before = batch_count()
    r = client.post("/v1/batches", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert batch_count() == before


def test_too_many_new_tokens_and_wrong_content_type(client, env):
    r = client.post("/v1/batches", json={"source": {"kind": "path", "path": str(env / "demo")},
                                         "max_new_tokens": 10**6})
    assert r.status_code == 422 and "max_new_tokens" in r.json()["detail"]
    r = client.post("/v1/batches", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415


@pytest.mark.parametrize("name,data,message", [
    ("evil.tar.gz", tar_gz({"repo/a.py": b"x", "../evil.py": b"x"}), "traversal"),
    ("abs.tar.gz", tar_gz({"/etc/evil.py": b"x"}), "absolute"),
    ("link.tar.gz", tar_gz({"repo/a.py": b"x"}, {"repo/l": "/etc/passwd"}), "link"),
    ("bomb.tar.gz", tar_gz({"repo/zeros.py": bytes(2_000_000)}), "bomb"),
    ("corrupt.tar.gz", b"\x1f\x8b\x08\x00garbage-garbage-garbage", "corrupt"),
    ("notes.txt", b"plain text", "not a .tar.gz or .zip"),
])
def test_hostile_archives_are_refused_with_422(client, name, data, message):
    before = batch_count()
    r = client.post("/v1/batches", files={"file": (name, data)}, data={"max_new_tokens": "8"})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert batch_count() == before


@pytest.mark.parametrize("fields, field", [
    ({"questions": "a\x00b"}, "questions[0]"),
    ({"policy": "h2o\x00"}, "policy"),
    ({"tasks": "summaries,\x00"}, "tasks"),
    ({"budget": '{"tokens": "\\u0000"}'}, "budget.tokens"),
    ({"budget": '{"tokens": "\\ud800"}'}, "budget.tokens"),
    ({"max_new_tokens": "8\x00"}, "max_new_tokens"),
])
def test_multipart_text_fields_are_checked_like_json_bodies(client, fields, field):
    """Issue 23 #6 for batches: NUL or a lone surrogate in any form field is the same 422 as in
    a JSON body (field and offset), before anything is stored."""
    before = batch_count()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("demo/a.py", "X = 1\n")
    r = client.post("/v1/batches", files={"file": ("demo.zip", buffer.getvalue())}, data=fields)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{field}:") and "offset" in r.json()["detail"]
    assert batch_count() == before


@pytest.mark.parametrize("body, field", [
    (b'{"source": {"kind": "path", "path": "/x"}, "questions": ["a\\u0000"]}', "questions[0]"),
    (b'{"source": {"kind": "path", "path": "/x"}, "policy": "\\ud800"}', "policy"),
])
def test_json_bodies_with_nul_or_surrogates_name_the_field(client, body, field):
    r = client.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}:"), r.text


def test_archive_upload_is_stored_and_limited(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("demo/a.py", "X = 1\n")
    r = client.post("/v1/batches", files={"file": ("demo.zip", buffer.getvalue())},
                    data={"tasks": "summaries", "budget": '{"tokens": 64}',
                          "policy": "h2o"})
    assert r.status_code == 202, r.text
    b = client.get(r.json()["url"]).json()
    assert b["source"] == {"kind": "archive", "filename": "demo.zip",
                           "bytes": len(buffer.getvalue())}
    assert b["tasks"] == ["summaries"] and b["budget"] == {"tokens": 64}
    r = client.post("/v1/batches", files={"file": ("big.zip", b"PK\x03\x04" + bytes(300_000))})
    assert r.status_code == 413
    r = client.post("/v1/batches", files={"other": ("x.zip", buffer.getvalue())})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]


def test_list_parameters_are_bounded(client):
    for params in ({"limit": 0}, {"limit": 5000}, {"offset": -1}, {"status": "weird"}):
        assert client.get("/v1/batches", params=params).status_code == 422, params


def test_schedules_crud(client, env, keys):
    body = {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Paris",
            "source": {"kind": "path", "path": str(env / "demo")}, "max_new_tokens": 8}
    r = client.post("/v1/schedules", json=body)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["next_run_at"] and s["enabled"] and s["running_batch_id"] is None
    assert client.get(f"/v1/schedules/{s['id']}", headers={"X-API-Key": keys[1]}).status_code == 404
    p = client.patch(f"/v1/schedules/{s['id']}", json={"enabled": False}).json()
    assert p["enabled"] is False and p["next_run_at"] is None and p["cron"] == "0 2 * * *"
    p = client.patch(f"/v1/schedules/{s['id']}", json={"enabled": True, "cron": "30 3 * * 1"})
    assert p.status_code == 200 and p.json()["next_run_at"]
    assert client.patch(f"/v1/schedules/{s['id']}", json={"cron": "61 * * * *"}).status_code == 422
    assert client.patch(f"/v1/schedules/{s['id']}", json={"cron": None}).status_code == 422
    assert client.get("/v1/schedules").json()["total"] == 1
    assert client.delete(f"/v1/schedules/{s['id']}", headers={"X-API-Key": keys[1]}).status_code == 404
    assert client.delete(f"/v1/schedules/{s['id']}").status_code == 204
    assert client.get(f"/v1/schedules/{s['id']}").status_code == 404


@pytest.mark.parametrize("change,message", [
    ({"cron": "every night"}, "cron"), ({"cron": "0 2 * * * *"}, "5 fields"),
    ({"timezone": "Mars/Olympus"}, "time zone"),
    ({"source": {"kind": "git", "url": "git://x/y"}}, "scheme"),
    ({"cron": "* * * * *", "source": {"kind": "git", "url": "https://127.0.0.1:6391/x.git"}},
     "loopback"),
    ({"source": {"kind": "git", "url": "https://169.254.169.254/latest/meta-data/"}},
     "link-local"),
])
def test_bad_schedules_are_422(client, env, change, message):
    body = {"cron": "0 2 * * *", "source": {"kind": "path", "path": str(env / "demo")}, **change}
    r = client.post("/v1/schedules", json=body)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_a_schedule_cannot_be_changed_to_an_internal_git_host(client, env):
    body = {"cron": "0 2 * * *", "source": {"kind": "path", "path": str(env / "demo")}}
    created = client.post("/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    r = client.patch(f"/v1/schedules/{created.json()['id']}",
                     json={"source": {"kind": "git", "url": "https://[fd00:ec2::254]/x.git"}})
    assert r.status_code == 422 and "private" in r.json()["detail"], r.text
    assert client.get(f"/v1/schedules/{created.json()['id']}").json()["source"]["kind"] == "path"


def test_openapi_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/batches", "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/report",
            "/v1/batches/{batch_id}/cancel", "/v1/schedules",
            "/v1/schedules/{schedule_id}"} <= set(paths)
    content = paths["/v1/batches"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)


def test_questions_are_stored_and_shown_unanswered_until_their_job_runs(client, env):
    r = client.post("/v1/batches", json={"source": {"kind": "path", "path": str(env / "demo")},
                                         "questions": ["What does pkg/a.py define?"]})
    assert r.status_code == 202, r.text
    b = client.get(r.json()["url"]).json()
    assert b["answers"] == [{"question": "What does pkg/a.py define?", "answer": None}]
    md = client.get(r.json()["url"] + "/report").text
    assert "## Questions" in md and "**What does pkg/a.py define?**" in md
    r = client.post("/v1/batches", json={"source": {"kind": "path", "path": str(env / "demo")},
                                         "questions": [f"q{i}?" for i in range(40)]})
    assert r.status_code == 422 and "at most" in r.json()["detail"]


def test_job_list_keeps_a_batchs_file_jobs_apart(client, env, keys):
    """GET /v1/jobs lists the jobs a client submitted itself; a repository batch's file jobs
    (hundreds per batch) are listed with ?batch=<id> or ?batch=any."""
    from workers.batches import run_ingest

    r = client.post("/v1/batches", json={"source": {"kind": "path", "path": str(env / "demo")}})
    batch_id = r.json()["id"]
    assert run_ingest(batch_id) == "ingested"  # one file job (pkg/a.py)
    own = client.post("/v1/jobs", json={"document": "A note to summarise."})
    assert own.status_code in (200, 201, 202), own.text
    own_id = own.json()["id"]
    listed = {j["id"]: j for j in client.get("/v1/jobs?limit=500").json()["items"]}
    assert own_id in listed and all(j["batch_id"] is None for j in listed.values())
    of_batch = client.get(f"/v1/jobs?batch={batch_id}").json()
    assert of_batch["total"] == 1 and of_batch["items"][0]["batch_id"] == batch_id
    every = {j["id"] for j in client.get("/v1/jobs?batch=any&limit=500").json()["items"]}
    assert own_id in every and of_batch["items"][0]["id"] in every
    other = client.get(f"/v1/jobs?batch={batch_id}", headers={"X-API-Key": keys[1]})
    assert other.status_code == 404  # another tenant's batch, as a missing one
    assert client.get("/v1/jobs?batch=not-a-uuid").status_code == 404


def test_a_tenant_at_its_quota_is_refused_a_batch_with_429_and_retry_after(client, env, keys):
    """Issue 23 #3 (the submission half): a batch's file jobs count against the quotas, so a
    tenant already at max_active_jobs or its daily tokens is refused a batch, as a job."""
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope
    from service.jobs.quotas import set_limits

    with session_scope() as s:
        busy, spent = get_or_create_tenant(s, "busy"), get_or_create_tenant(s, "spent")
        set_limits(s, busy.id, max_active_jobs=2, max_tokens_per_day=None)
        set_limits(s, spent.id, max_active_jobs=None, max_tokens_per_day=0)
        busy_key, spent_key = issue_key(s, busy).raw_key, issue_key(s, spent).raw_key
    source = {"source": {"kind": "path", "path": str(env / "demo")}}
    first = client.post("/v1/batches", json=source, headers={"X-API-Key": busy_key})
    assert first.status_code == 202, first.text  # under the quota: admitted
    for i in range(2):  # two jobs (no worker here: they stay queued) fill the quota
        r = client.post("/v1/jobs", json={"document": f"doc {i}"}, headers={"X-API-Key": busy_key})
        assert r.status_code == 202, r.text
    before = batch_count()
    for key, words in ((busy_key, "queued or running"), (spent_key, "daily token")):
        r = client.post("/v1/batches", json=source, headers={"X-API-Key": key})
        assert r.status_code == 429 and words in r.json()["detail"], r.text
        assert int(r.headers["Retry-After"]) >= 1
    assert batch_count() == before


def test_a_batchs_files_beyond_the_quota_wait_and_show_why(client, env, keys):
    """Issue 23 #3 (the fan-out half): at max_active_jobs = 1, ingestion queues one file and
    the others wait, shown as `waiting` with the reason (jobs too: ?status=waiting); cancel
    cancels the waiting ones."""
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope
    from service.jobs.quotas import set_limits
    from workers.batches import run_ingest

    for name in ("a", "b", "c"):
        (env / "three" / "pkg").mkdir(parents=True, exist_ok=True)
        (env / "three" / "pkg" / f"{name}.py").write_text(f"{name.upper()} = 1\n")
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "one-at-a-time")
        set_limits(s, tenant.id, max_active_jobs=1, max_tokens_per_day=None)
        key = {"X-API-Key": issue_key(s, tenant).raw_key}
    r = client.post("/v1/batches", json={"source": {"kind": "path", "path": str(env / "three")}},
                    headers=key)
    assert r.status_code == 202, r.text
    assert run_ingest(r.json()["id"]) == "ingested"
    files = client.get(r.json()["url"], headers=key).json()["files"]
    assert [f["status"] for f in files] == ["queued", "waiting", "waiting"]
    assert files[0]["waiting_reason"] is None
    assert files[1]["waiting_reason"] == ("waiting for the tenant's active-jobs quota "
                                          "(1 queued or running at once)")
    report = client.get(r.json()["url"] + "/report", headers=key).text
    assert "waiting for the tenant's active-jobs quota" in report
    waiting = client.get(f"/v1/jobs?batch={r.json()['id']}&status=waiting", headers=key).json()
    assert waiting["total"] == 2 and {j["id"] for j in waiting["items"]} == {
        f["job_id"] for f in files[1:]}
    # cancelling the queued file's job frees its slot at once: the next file is released
    client.post(f"/v1/jobs/{files[0]['job_id']}/cancel", headers=key)
    files = client.get(r.json()["url"], headers=key).json()["files"]
    assert [f["status"] for f in files[1:]] == ["queued", "waiting"]
    cancelled = client.post(r.json()["url"] + "/cancel", headers=key).json()
    assert [f["status"] for f in cancelled["files"]] == ["cancelled"] * 3


def test_an_archives_devices_fifos_and_links_are_listed_among_the_skipped_files(client):
    """Issue 23 #9: nothing an archive holds disappears silently."""
    from workers.batches import run_ingest

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("repo/a.py")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"X = 1\n"))
        for name, kind in (("repo/dev/tty0", tarfile.CHRTYPE), ("repo/fifo", tarfile.FIFOTYPE)):
            special = tarfile.TarInfo(name)
            special.type = kind
            tar.addfile(special)
        alias = tarfile.TarInfo("repo/alias.py")
        alias.type, alias.linkname = tarfile.SYMTYPE, "a.py"
        tar.addfile(alias)
    r = client.post("/v1/batches", files={"file": ("repo.tar.gz", buffer.getvalue())})
    assert r.status_code == 202, r.text
    assert run_ingest(r.json()["id"]) == "ingested"
    batch = client.get(r.json()["url"]).json()
    skipped = {(s["path"], s["reason"]) for s in batch["skipped"]}
    assert {("dev/tty0", "special_file"), ("fifo", "special_file"),
            ("alias.py", "link")} <= skipped, batch["skipped"]
    assert [f["path"] for f in batch["files"]] == ["a.py"]


def test_a_git_host_that_turns_internal_after_submission_is_refused_at_clone_time(
        client, monkeypatch):
    """The worker checks the host again and connects only to the address it checked: a name
    that resolved to a public address at submission and to the metadata service at clone time
    (DNS rebinding) fails the batch without a connection."""
    from service.core.settings import get_settings
    from service.repos import git_remote
    from workers.batches import run_ingest

    answers = iter([["140.82.112.3"], ["169.254.169.254"]])
    monkeypatch.setattr(git_remote, "system_resolver", lambda host, port: next(answers))
    monkeypatch.setenv("NAMM_BATCHES__GIT_ALLOW_PUBLIC_HOSTS", "true")
    get_settings.cache_clear()
    try:
        r = client.post("/v1/batches", json={"source": {"kind": "git",
                                                        "url": "https://repo.example/r.git"}})
        assert r.status_code == 202, r.text
        assert run_ingest(r.json()["id"]) == "failed"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    batch = client.get(r.json()["url"]).json()
    assert batch["status"] == "failed"
    assert "resolves to a link-local address" in batch["error"], batch["error"]
    assert "169.254" not in batch["error"]


def test_a_deeply_nested_batch_body_is_a_400_not_a_500(client):
    for depth in (990, 20_000):  # past json.loads' recursion, or past the checks after it
        body = b'{"source": ' + b"[" * depth + b"]" * depth + b"}"
        r = client.post("/v1/batches", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), r.text
        assert "detail" in r.json()
