"""A repository batch on the production configuration (PostgreSQL, Redis, a real worker, the
real default model): a small real code base cloned from a local git repository (file://, under
the allowed root), the git-URL path of the sources, with a question about the whole codebase."""

import os

import pytest

from batch_flows import check_batch_stored_once, check_redelivery_is_noop, run_batch, \
    tiny_git_repo

pytestmark = [pytest.mark.services, pytest.mark.model, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def allowed_root(tmp_path_factory):
    """Set before the stack starts (the stack's processes copy this environment)."""
    root = tmp_path_factory.mktemp("repos")
    old = os.environ.get("NAMM_BATCHES__ALLOWED_ROOTS")
    os.environ["NAMM_BATCHES__ALLOWED_ROOTS"] = f'["{root}"]'
    yield root
    if old is None:
        os.environ.pop("NAMM_BATCHES__ALLOWED_ROOTS", None)
    else:
        os.environ["NAMM_BATCHES__ALLOWED_ROOTS"] = old


def test_git_batch_postgres_redis(allowed_root, pg_redis_stack):
    repo = tiny_git_repo(allowed_root)
    batch = run_batch(pg_redis_stack, lambda c: c.post("/v1/batches", json={
        "source": {"kind": "git", "url": f"file://{repo}"}, "policy": "surprisal", "budget": 0.5,
        "max_new_tokens": 8, "questions": ["Which module sets up the database schema?"]}),
        questions=1)
    assert batch["source"] == {"kind": "git", "url": f"file://{repo}"}
    # the questions' job read every file's text, in reading order
    from sqlalchemy import select

    from service.core.db import session_scope
    from service.models import Job

    with session_scope() as s:
        text = s.scalar(select(Job).where(Job.batch_id == batch["id"], Job.kind == "answer")
                        ).document.text
    starts = [text.index(f"File: {f['path']}") for f in batch["files"]]
    assert starts == sorted(starts)
    check_batch_stored_once(batch["id"], jobs_expected=6)
    check_redelivery_is_noop(pg_redis_stack, batch, jobs_expected=6)
