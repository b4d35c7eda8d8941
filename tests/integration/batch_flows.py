"""The repository-batch flow both stacks must pass: a small real code base (four files of this
project's own sources, plus files ingestion must skip) goes in as an archive or a git clone, a
real worker ingests it on `cpu`, summarises each file and writes the overview on `gpu` with the
real default model; progress, per-file results, the Markdown and JSON reports, usage by batch
and the absence of duplicates are checked, then each job of the batch is delivered again (as
after a lost acknowledgement) and nothing changes."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("service/core/state.py", "service/core/contract.py", "service/keys.py",
           "service/migrate.py")
NOISE = {".gitignore": b"*.log\n", "debug.log": b"noise\n",
         "node_modules/left-pad/index.js": b"module.exports = 1;\n",
         "poetry.lock": b"# lock\n", "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00"}


def write_tiny_repo(dest: Path) -> Path:
    for rel in SOURCES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes((ROOT / rel).read_bytes())
    for rel, data in NOISE.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    return dest


def tiny_repo_archive(tmp: Path) -> bytes:
    repo = write_tiny_repo(tmp / "tiny-repo")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(repo, arcname="tiny-repo")
    return buffer.getvalue()


def tiny_git_repo(root: Path) -> Path:
    repo = write_tiny_repo(root / "tiny-repo")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(root)}
    for args in (["init", "-q", "-b", "main"], ["add", "-A", "-f"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)
    return repo


def wait_for_batch(client: httpx.Client, batch_id: str, timeout_s: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout_s
    seen: list[tuple[str, int]] = []
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        point = (batch["status"], batch["progress"]["files_done"])
        if not seen or seen[-1] != point:
            seen.append(point)
        if batch["status"] in ("done", "failed", "cancelled"):
            batch["_seen"] = seen
            return batch
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} not finished after {timeout_s} s: {batch}")


def run_batch(stack, submit, questions: int = 0) -> dict:
    """`submit(client)` posts the batch (with `questions` questions); returns the finished
    batch, checked."""
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.keys[0]},
                      timeout=60) as client:
        r = submit(client)
        assert r.status_code == 202, r.text
        batch = wait_for_batch(client, r.json()["id"])
        assert batch["status"] == "done", (batch, stack.procs.log_tail("worker", 80))
        md = client.get(f"/v1/batches/{batch['id']}/report", params={"format": "md"})
        js = client.get(f"/v1/batches/{batch['id']}/report", params={"format": "json"})
    assert batch["error"] is None
    progress = batch["progress"]
    assert progress == {"files_total": 4, "files_done": 4, "files_failed": 0,
                        "files_skipped": progress["files_skipped"],
                        "tokens_read": progress["tokens_read"], "fraction": 1.0}
    # progress was visible on the way: files counted up while the batch ran
    done_counts = [n for status, n in batch["_seen"]]
    assert done_counts == sorted(done_counts) and batch["_seen"][-1] == ("done", 4)
    files = {f["path"]: f for f in batch["files"]}
    assert set(files) == set(SOURCES)
    # reading order: one folder's files together
    folders = [p.rsplit("/", 1)[0] for p in (f["path"] for f in batch["files"])]
    assert folders == sorted(folders, key=folders.index)
    for f in files.values():
        assert f["status"] == "done" and f["attempts"] == 1 and f["language"] == "python"
        assert f["summary"] and f["summary"].strip(), f
        assert f["tokens"] > 20
    assert progress["tokens_read"] == sum(f["tokens"] for f in files.values())
    skipped = {s["path"]: s["reason"] for s in batch["skipped"]}
    assert skipped["debug.log"] == "gitignored" and skipped["node_modules/"] == "vendored"
    assert skipped["poetry.lock"] == "lock_file" and skipped["logo.png"] == "unsupported"
    assert progress["files_skipped"] == len(skipped)
    assert batch["overview"] and batch["overview"].strip()
    assert batch["usage"]["jobs"] == 5 + (questions > 0)  # files, overview, questions
    assert len(batch["answers"]) == questions
    for answer in batch["answers"]:
        assert answer["answer"] and answer["answer"].strip(), batch["answers"]
    assert batch["usage"]["tokens_in"] >= progress["tokens_read"]
    # reports
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert "## Overview" in md.text and batch["overview"].strip() in md.text
    for path in SOURCES:
        assert f"### {path}" in md.text and files[path]["summary"].strip() in md.text
    assert "| `debug.log` | gitignored |" in md.text
    report = js.json()
    assert report["id"] == batch["id"] and report["files"] == batch["files"]
    assert report["overview"] == batch["overview"]
    return batch


def check_batch_stored_once(batch_id: str, jobs_expected: int = 5) -> None:
    from service.core.db import session_scope
    from service.models import Job, Result, UsageRecord
    from service.models import BatchFile

    with session_scope() as s:
        jobs = s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id))
        results = s.scalar(select(func.count()).select_from(Result)
                           .join(Job, Job.id == Result.job_id).where(Job.batch_id == batch_id))
        usage = s.scalar(select(func.count()).select_from(UsageRecord)
                         .join(Job, Job.id == UsageRecord.job_id)
                         .where(Job.batch_id == batch_id))
        files = s.scalar(select(func.count()).select_from(BatchFile)
                         .where(BatchFile.batch_id == batch_id))
    n = jobs_expected
    assert (jobs, results, usage, files) == (n, n, n, 4)


def check_redelivery_is_noop(stack, batch: dict, jobs_expected: int = 5) -> None:
    """Every job of the batch delivered again (as after a lost acknowledgement): nothing is
    run or counted twice."""
    from flows import wait_for_worker_log

    from service.core.db import session_scope
    from service.models import Job
    from service.repos.queue import enqueue_jobs_group

    with session_scope() as s:
        job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch["id"])))
    assert len(job_ids) == jobs_expected and enqueue_jobs_group(job_ids)
    for job_id in job_ids:
        wait_for_worker_log(stack, f"job {job_id} not run: finished")
    again = httpx.get(f"{stack.url}/v1/batches/{batch['id']}",
                      headers={"X-API-Key": stack.keys[0]}).json()
    assert again["progress"] == batch["progress"] and again["files"] == batch["files"]
    assert again["overview"] == batch["overview"]
    check_batch_stored_once(batch["id"], jobs_expected)
    other = httpx.get(f"{stack.url}/v1/batches/{batch['id']}",
                      headers={"X-API-Key": stack.keys[1]})
    assert other.status_code == 404
