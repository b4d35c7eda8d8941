"""Queues, task names and the Celery application, and sending tasks to the broker by name.

Cheap to import (no torch, no task code): the API sends tasks by name from here, and
workers/celery_app.py builds the worker's application with the same factory, adding the task
modules. `service` never imports `workers`.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from service.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

RUN_JOB = "namm.run_job"
SWEEP_JOBS = "namm.sweep_jobs"
BATCH_TICK = "namm.batch_tick"
BATCH_TICK_INTERVAL_S = 30.0
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
QUEUES = (GPU_QUEUE, CPU_QUEUE)


def broker_transport_options(settings: Settings) -> dict:
    url = settings.broker.url.get_secret_value()
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        # Redis hands an unacked message to another worker after this long: longer than any job.
        options: dict = {"visibility_timeout": settings.broker.visibility_timeout_s}
        if settings.broker.key_prefix:
            options["global_keyprefix"] = settings.broker.key_prefix
        return options
    if url.startswith(("sqla+", "sqlalchemy+")) and "sqlite" in url:
        # these options go to sqlalchemy.create_engine: WAL so producers and the worker's
        # polling do not block each other, and a wait for the lock instead of an error
        return {"creator": _sqlite_broker_connection(url.split("sqlite:///", 1)[-1])}
    return {}


def _sqlite_broker_connection(path: str):
    def connect():
        import sqlite3

        connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def make_celery(settings: Settings | None = None, include: tuple[str, ...] = ()) -> Celery:
    """The Celery application; `include` names the task modules a worker imports."""
    settings = settings or get_settings()
    app = Celery("namm", include=list(include))
    app.conf.update(
        broker_url=settings.broker.url.get_secret_value(),
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # results live in our own database (Result rows), not in a Celery backend
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # a job's message is acknowledged only once the job has finished; if the child process
        # dies (OOM, segfault) the message goes back to the queue, and the attempt cap stored in
        # jobs.max_attempts stops a poison job from killing workers forever
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_soft_time_limit=settings.worker.soft_time_limit_s,
        task_time_limit=settings.worker.time_limit_s,
        task_default_queue=CPU_QUEUE,
        task_routes={RUN_JOB: {"queue": GPU_QUEUE}, SWEEP_JOBS: {"queue": CPU_QUEUE}},
        # the API must not hang on a dead broker: the beat sweeper enqueues what was missed
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                   "interval_max": 0.5},
        # a tick not started within its interval is dropped by the worker (expires): the next
        # one does the same work, so a stopped or busy cpu worker never finds a pile of them
        beat_schedule={
            "sweep-jobs": {"task": SWEEP_JOBS, "schedule": float(settings.worker.sweep_interval_s),
                           "options": {"expires": float(settings.worker.sweep_interval_s)}},
            # repository batches (workers/batches.py): due schedules, lost batch messages
            "batch-tick": {"task": BATCH_TICK, "schedule": BATCH_TICK_INTERVAL_S,
                           "options": {"expires": BATCH_TICK_INTERVAL_S}},
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


_lock = threading.Lock()
_app: Celery | None = None


def celery_app() -> Celery:
    """This process's producer application (built lazily: settings may change in tests)."""
    global _app
    if _app is None:
        with _lock:
            if _app is None:
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


def queue_depths(queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
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
        queue_depths((GPU_QUEUE,))
        return True
    except Exception as exc:
        logger.warning("broker unreachable (%s)", type(exc).__name__)
        return False
