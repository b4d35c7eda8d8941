"""Batched enqueue on the real Redis under a key prefix: one pipelined round trip, every message
delivered, and the queue depth (queue_depths, /metrics, the sweeper) read where kombu put it."""

import json

import pytest

from service.core.state import reset_process_state

pytestmark = pytest.mark.services


@pytest.fixture
def redis_env(redis_broker, tmp_path):
    url, prefix = redis_broker
    prefix += f"{tmp_path.name}:"  # a queue of its own for each test
    mp = pytest.MonkeyPatch()
    mp.setenv("NAMM_BROKER__URL", url)
    mp.setenv("NAMM_BROKER__KEY_PREFIX", prefix)
    mp.setenv("NAMM_DATABASE__URL", f"sqlite:///{tmp_path / 'namm.db'}")
    mp.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    reset_process_state()
    yield url, prefix
    mp.undo()
    reset_process_state()


def test_a_batch_of_jobs_lands_as_one_message_each(redis_env):
    import redis

    from service.core.queue import enqueue_jobs, queue_depths

    url, prefix = redis_env
    client = redis.Redis.from_url(url)
    ids = [f"job-{i}" for i in range(25)]
    assert enqueue_jobs(ids) == 25
    assert queue_depths(("gpu", "cpu")) == {"gpu": 25, "cpu": 0}
    bodies = client.lrange(f"{prefix}gpu", 0, -1)
    assert len(bodies) == 25
    sent = sorted(json.loads(b)["headers"]["argsrepr"] for b in bodies)
    assert sent == sorted(repr([i]) for i in ids)  # each job id exactly once, as its own task


def test_depth_counts_priority_sub_queues(redis_env):
    from service.core.queue import celery_app, queue_depths

    celery_app().send_task("namm.run_job", args=["urgent"], queue="gpu", priority=9)
    celery_app().send_task("namm.run_job", args=["plain"], queue="gpu")
    assert queue_depths(("gpu",)) == {"gpu": 2}


def test_metrics_report_the_prefixed_queue(redis_env):
    from service.core import migrate
    from service.core.queue import enqueue_jobs
    from service.api.metrics import render_metrics

    migrate.upgrade()
    assert enqueue_jobs([f"m-{i}" for i in range(3)]) == 3
    text = render_metrics()[0].decode()
    # the broker's own count; namm_queue_depth{gpu} counts queued jobs (none stored here)
    assert 'namm_broker_messages{queue="gpu"} 3.0' in text, text
    assert 'namm_queue_depth{queue="gpu"} 0.0' in text, text
    assert 'namm_component_up{component="broker"} 1.0' in text


def test_sweeper_leaves_old_queued_jobs_while_messages_wait(redis_env):
    """With the depth misread as 0, the sweeper re-sent every old queued job (duplicates)."""
    from datetime import timedelta

    from sqlalchemy import update

    from namm.spec import Budget
    from service.api.keys import get_or_create_tenant
    from service.core import migrate
    from service.core.db import session_scope
    from service.core.queue import enqueue_jobs
    from service.models import Job, utcnow
    from service.jobs.repository import JobRepository, NewJob
    from workers.tasks import sweep

    migrate.upgrade()
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "t")
        job_id = JobRepository(s).create([NewJob(
            tenant_id=tenant.id, text="x", content_type="text/plain", size_bytes=1,
            filename=None, kind="summarize", instruction=None, budget=Budget.fraction(0.5))])[0]
        s.execute(update(Job).values(enqueued_at=utcnow() - timedelta(hours=1)))
    assert enqueue_jobs([job_id]) == 1  # its message waits in the prefixed queue
    outcome = sweep()  # it reads the job ids waiting under the prefix (broker_scan)
    assert outcome["stale_running"] == 0 and outcome["lost_queued"] == 0, outcome
