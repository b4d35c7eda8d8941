"""The `make run` configuration: SQLite (WAL), kombu's SQLAlchemy broker on a SQLite file,
a real Celery worker process and beat, the LitServe API, the real default model."""

import pytest

from flows import (check_metrics, check_rerun_is_noop, check_tenant_isolation, stored_document_journey,
                   submit_and_read_answer)

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]


def test_submit_run_store_serve_embedded(embedded_stack):
    job = submit_and_read_answer(embedded_stack)
    check_tenant_isolation(embedded_stack, job["id"])
    check_rerun_is_noop(embedded_stack, job)
    check_metrics(embedded_stack)
    assert embedded_stack.procs.procs["beat"].poll() is None  # beat is alive


def test_stored_document_journey_embedded(embedded_stack):
    stored_document_journey(embedded_stack)
