"""Send tasks to the broker by name, from processes that must not import torch (the API)."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_app = None


def celery_app():
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                from workers.celery_app import make_celery

                _app = make_celery()
    return _app


def reset_celery_app() -> None:
    global _app
    _app = None


def enqueue_job(job_id: str) -> bool:
    """Queue the job for a GPU worker. False when the broker is unreachable: the job row is
    already committed, and the beat sweeper enqueues it once the broker is back."""
    return enqueue_jobs([job_id]) == 1


def enqueue_jobs(job_ids: list[str]) -> int:
    """Queue several jobs over one producer connection; returns how many were sent."""
    from workers.celery_app import GPU_QUEUE, RUN_JOB

    if not job_ids:
        return 0
    sent = 0
    try:
        app = celery_app()
        with app.producer_or_acquire() as producer:
            # one pipelined round trip on Redis (kombu's publish batch); transports without
            # batching (the embedded SQLite broker) publish each message at once, so a failure
            # part-way leaves the earlier ones sent
            batched = producer.supports_batch_publish
            with producer.batch():
                for job_id in job_ids:
                    app.send_task(RUN_JOB, args=[job_id], queue=GPU_QUEUE, producer=producer)
                    sent += 0 if batched else 1
            sent = len(job_ids)
    except Exception as exc:  # broker down: the rows are committed; the sweeper enqueues them
        logger.warning("enqueue of %d job(s) failed (%s); the sweeper will retry",
                       len(job_ids) - sent, type(exc).__name__)
    return sent


def queue_depths(queues: tuple[str, ...] = ("gpu", "cpu")) -> dict[str, int]:
    """Messages waiting in each queue."""
    with celery_app().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        if conn.transport.driver_type == "redis":
            return _redis_depths(channel, queues)
        from kombu.exceptions import ChannelError

        depths: dict[str, int] = {}
        for queue in queues:
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:  # queue not declared yet: nothing was ever sent to it
                depths[queue] = 0
        return depths


def _redis_depths(channel, queues: tuple[str, ...]) -> dict[str, int]:
    """LLEN of every list that holds a queue's messages, read with a plain client.

    kombu keeps a queue in one Redis list per priority step (`gpu`, then `gpu<sep>3`, ...) under
    the deployment's key prefix. Its passive queue_declare cannot be trusted with a prefix: it
    checks the keys with EXISTS, which its prefixing client leaves unprefixed (kombu 5.7), and
    so reported 0 while messages waited. Here every key is spelled out in full instead."""
    import redis

    prefix = channel.global_keyprefix or ""
    client = redis.Redis(connection_pool=channel.client.connection_pool)  # no key rewriting
    keys = {queue: [prefix + (f"{queue}{channel.sep}{step}" if step else queue)
                    for step in channel.priority_steps] for queue in queues}
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in keys[queue]:
                pipe.llen(key)
        lengths = iter(pipe.execute())
    return {queue: sum(next(lengths) for _ in keys[queue]) for queue in queues}


def broker_reachable() -> bool:
    """A real round trip (a passive queue lookup), not just a socket."""
    try:
        queue_depths(("gpu",))
        return True
    except Exception as exc:
        logger.warning("broker unreachable (%s)", type(exc).__name__)
        return False
