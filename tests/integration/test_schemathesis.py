"""The OpenAPI document describes the API exactly (issue 23 item 10): schemathesis, every
check, against a real API process on SQLite and on the real PostgreSQL + Redis, must find
nothing. A bounded run (the examples and coverage phases: about 3,000 cases per backend, most
of them the coverage phase trying each of the ~600 time zone names the document lists, in
three places); the full run with fuzzing and stateful sequences is bench/schemathesis_api.py,
its figures in docs/reliability.md."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from schemathesis_api import run  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def check_run(backend: str) -> None:
    result = run(backend, max_examples=5, seed=23, phases="examples,coverage")
    print(result.stdout[-4000:])
    report = result.stdout + result.stderr
    summary = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert summary, report[-4000:]
    # the run reached every operation with many cases, and every case passed every check
    assert int(summary.group(1)) >= 1000, report[-4000:]
    assert summary.group(1) == summary.group(2), report[-8000:]
    assert "FAILURES" not in result.stdout and "ERRORS" not in result.stdout, report[-8000:]
    assert result.returncode == 0, report[-8000:]


def test_schemathesis_finds_no_failure_on_sqlite():
    check_run("sqlite")


@pytest.mark.services
def test_schemathesis_finds_no_failure_on_postgres(pg_url, redis_broker):
    # the fixtures fail (CI) or skip when PostgreSQL or Redis is not running
    check_run("pg")
