"""Batched enqueue on the real Redis: one pipelined round trip, every message delivered."""

import json

import pytest

from service.state import reset_process_state


@pytest.fixture
def redis_env(redis_broker, tmp_path):
    url, prefix = redis_broker
    mp = pytest.MonkeyPatch()
    mp.setenv("NAMM_BROKER__URL", url)
    mp.setenv("NAMM_BROKER__KEY_PREFIX", prefix + "enqueue:")
    mp.setenv("NAMM_DATABASE__URL", f"sqlite:///{tmp_path / 'namm.db'}")
    reset_process_state()
    yield url, prefix + "enqueue:"
    mp.undo()
    reset_process_state()


def test_a_batch_of_jobs_lands_as_one_message_each(redis_env):
    import redis

    from service.enqueue import enqueue_jobs, queue_depths

    url, prefix = redis_env
    client = redis.Redis.from_url(url)
    ids = [f"job-{i}" for i in range(25)]
    assert enqueue_jobs(ids) == 25
    assert queue_depths(("gpu",))["gpu"] == 25
    bodies = client.lrange(f"{prefix}gpu", 0, -1)
    assert len(bodies) == 25
    sent = sorted(json.loads(b)["headers"]["argsrepr"] for b in bodies)
    assert sent == sorted(repr([i]) for i in ids)  # each job id exactly once, as its own task
