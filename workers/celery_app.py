"""The Celery application. Importing it is cheap: no torch, no model, no task code.

The API imports only this module and enqueues tasks *by name* (see service/enqueue.py);
`include` makes the worker import workers.tasks, where the model is loaded lazily in the child.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings, get_settings

RUN_JOB = "namm.run_job"
SWEEP_JOBS = "namm.sweep_jobs"
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"


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


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("namm", include=["workers.tasks"])
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
        beat_schedule={
            "sweep-jobs": {"task": SWEEP_JOBS, "schedule": float(settings.worker.sweep_interval_s)},
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = make_celery()
