"""A repository batch on the `make run` configuration (SQLite, kombu's SQLAlchemy broker, a real
worker and beat, the real default model): an archive of a small real code base."""

import pytest

from batch_flows import check_batch_stored_once, check_redelivery_is_noop, run_batch, \
    tiny_repo_archive

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]


def test_archive_batch_embedded(embedded_stack, tmp_path):
    data = tiny_repo_archive(tmp_path)
    batch = run_batch(embedded_stack, lambda c: c.post(
        "/v1/batches", files={"file": ("tiny-repo.tar.gz", data)},
        data={"policy": "surprisal", "budget": "0.5", "max_new_tokens": "8"}))
    assert batch["source"]["kind"] == "archive"
    check_batch_stored_once(batch["id"])
    check_redelivery_is_noop(embedded_stack, batch)


def test_cli_submits_follows_and_saves_the_report(embedded_stack, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = tmp_path / "one-file-repo"
    repo.mkdir()
    (repo / "keys.py").write_bytes((Path(__file__).resolve().parents[2] / "service" / "keys.py")
                                   .read_bytes())
    report = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, "-m", "service.repos", "submit", str(repo), "--url", embedded_stack.url,
         "--key", embedded_stack.keys[0], "--tasks", "summaries", "--max-new-tokens", "8",
         "--poll", "0.3", "--report", str(report)],
        capture_output=True, text=True, timeout=600, env=embedded_stack.env)
    assert done.returncode == 0, done.stderr
    assert ": done" in done.stderr and "1/1" in done.stderr  # the bar reached the end
    text = report.read_text()
    assert "### keys.py" in text and "*python," in text


def test_batch_resumes_after_the_worker_child_is_killed(embedded_stack, tmp_path):
    """SIGKILL of the worker's child while a file's job runs: the batch still finishes, the
    files finished before are not redone, the killed file's job runs once more, nothing is
    stored twice (the job's recovery: reject_on_worker_lost and the beat sweeper)."""
    import signal
    import time

    import httpx
    import psutil
    from sqlalchemy import select

    from batch_flows import wait_for_batch
    from service.core.db import session_scope
    from service.models import Job

    data = tiny_repo_archive(tmp_path)
    with httpx.Client(base_url=embedded_stack.url, timeout=60,
                      headers={"X-API-Key": embedded_stack.keys[0]}) as client:
        r = client.post("/v1/batches", files={"file": ("tiny-repo.tar.gz", data)},
                        data={"tasks": "summaries", "max_new_tokens": "8"})
        assert r.status_code == 202, r.text
        batch_id = r.json()["id"]
        deadline = time.monotonic() + 300
        killed_job = None
        while time.monotonic() < deadline and killed_job is None:
            with session_scope() as s:
                jobs = s.execute(select(Job.id, Job.status).where(Job.batch_id == batch_id)).all()
            done = [j for j, status in jobs if status == "done"]
            running = [j for j, status in jobs if status == "running"]
            if done and running:
                for child in psutil.Process(embedded_stack.procs.procs["worker"].pid).children(
                        recursive=True):
                    child.send_signal(signal.SIGKILL)
                killed_job, finished_before = running[0], set(done)
            time.sleep(0.05)
        assert killed_job, "never saw a file job running after another had finished"
        batch = wait_for_batch(client, batch_id, timeout_s=300)
    assert batch["status"] == "done", embedded_stack.procs.log_tail("worker", 80)
    assert batch["progress"]["files_done"] == 4 and batch["progress"]["files_failed"] == 0
    with session_scope() as s:
        attempts = dict(s.execute(select(Job.id, Job.attempts)
                                  .where(Job.batch_id == batch_id)).all())
    assert len(attempts) == 4  # no new job was made: the killed one was run again
    assert all(attempts[j] == 1 for j in finished_before)  # finished files not redone
    assert attempts[killed_job] == 2
    assert all(f["attempts"] == 1 and f["summary"] for f in batch["files"])


def test_a_batch_under_an_active_jobs_quota_runs_within_it_and_finishes(embedded_stack, tmp_path):
    """Issue 23 #3 end to end: a tenant at max_active_jobs = 2 sends a 4-file archive with an
    overview. Two files queue and two wait; each job's end (the real worker's `namm.run_job`)
    releases the next. The tenant never has more than 2 jobs queued or running, exactly the
    two waiting files were sent later than they were made, and the batch finishes every file."""
    import time

    import httpx
    from sqlalchemy import select

    from service.core.db import session_scope
    from service.models import Job, Tenant
    from service.jobs.quotas import active_jobs, set_limits

    with session_scope() as s:  # tenant-b: no job of its own left by the tests above
        tenant = s.scalar(select(Tenant.id).where(Tenant.name == "tenant-b"))
        set_limits(s, tenant, max_active_jobs=2, max_tokens_per_day=None)
    most, file_statuses = 0, set()
    try:
        with httpx.Client(base_url=embedded_stack.url, timeout=60,
                          headers={"X-API-Key": embedded_stack.keys[1]}) as client:
            r = client.post("/v1/batches", files={"file": ("tiny-repo.tar.gz",
                                                            tiny_repo_archive(tmp_path))},
                            data={"tasks": "summaries,overview", "max_new_tokens": "8"})
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                batch = client.get(r.json()["url"]).json()
                file_statuses |= {f["status"] for f in batch["files"]}
                with session_scope() as s:
                    most = max(most, active_jobs(s, tenant))
                if batch["status"] in ("done", "failed", "cancelled"):
                    break
                time.sleep(0.2)
    finally:
        with session_scope() as s:
            set_limits(s, tenant, max_active_jobs=None, max_tokens_per_day=None)
    assert batch["status"] == "done", embedded_stack.procs.log_tail("worker", 80)
    assert batch["progress"]["files_done"] == 4 and batch["overview"]
    assert most == 2, most  # used to the full, never past it
    with session_scope() as s:
        jobs = s.execute(select(Job.kind, Job.created_at, Job.enqueued_at)
                         .where(Job.batch_id == batch["id"])).all()
    assert len(jobs) == 5  # four files and the overview
    assert sum(1 for job in jobs if job.enqueued_at > job.created_at) == 2  # the released ones
    assert "done" in file_statuses and file_statuses <= {"queued", "waiting", "done"}


def test_a_repository_kept_as_a_stored_document_answers_its_questions_and_later_ones(embedded_stack, tmp_path):
    """Task `memory`: the codebase read once into a stored document; the batch's question is
    answered from it, and so is a question asked after the batch, without reading it again."""
    import httpx

    from batch_flows import wait_for_batch
    from flows import wait_for

    data = tiny_repo_archive(tmp_path)
    with httpx.Client(base_url=embedded_stack.url, headers={"X-API-Key": embedded_stack.keys[0]},
                      timeout=60) as c:
        r = c.post("/v1/batches", files={"file": ("tiny-repo.tar.gz", data)},
                   data={"policy": "surprisal", "budget": "0.5", "max_new_tokens": "8",
                         "tasks": "summaries,memory", "questions": "Which file issues API keys?"})
        assert r.status_code == 202, r.text
        batch = wait_for_batch(c, r.json()["id"])
        assert batch["status"] == "done", (batch, embedded_stack.procs.log_tail("worker", 80))
        assert batch["answers"][0]["answer"].strip()
        doc = c.get(batch["stored_document"]).json()
        assert doc["status"] == "ready" and doc["filename"] == "repository.txt"
        # every file, in reading order (the file jobs count their prompts' tokens too)
        from batch_flows import ROOT, SOURCES

        sizes = [len((ROOT / rel).read_text().encode()) for rel in SOURCES]
        # each file's text (with its path line) and a blank line between files
        assert sum(sizes) <= doc["size_bytes"] <= sum(sizes) + 64 * len(sizes)
        assert 0.6 * batch["progress"]["tokens_read"] < doc["tokens"] <= batch["progress"]["tokens_read"]
        jobs = c.get("/v1/jobs", params={"batch": batch["id"]}).json()["items"]
        kinds = sorted(j["kind"] for j in jobs)
        assert kinds == ["answer", "read", "summarize", "summarize", "summarize", "summarize"], kinds
        asked = c.get(f"/v1/jobs/{next(j['id'] for j in jobs if j['kind'] == 'answer')}").json()
        assert asked["stored_document"] == batch["stored_document"]
        assert asked["usage"]["tokens_not_reread"] == doc["tokens"]
        later = c.post(doc["questions_url"], json={"questions": ["What does state.py reset?"],
                                                   "max_new_tokens": 12})
        job = wait_for(c, later.json()["id"])
        assert job["status"] == "done" and job["result"]["text"].strip()
        assert job["usage"]["tokens_not_reread"] == doc["tokens"] and job["usage"]["tokens_in"] < 60
