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
