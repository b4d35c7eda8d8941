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
        data={"policy": "namm", "budget": "0.5", "max_new_tokens": "8"}))
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
