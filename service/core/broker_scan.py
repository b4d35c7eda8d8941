"""Which jobs have a message waiting in the broker: what the sweeper compares queued jobs with.

A job whose row says `queued` but whose message is in no broker queue will never run: its
message was lost (the broker restarted without saving, the enqueue after the commit failed,
or a worker parent that had taken it was SIGKILLed and Redis would hand it back only after
its visibility timeout, hours later). The sweeper (workers/tasks.py) enqueues such jobs again
within a minute instead of waiting for `requeue_after_s` of ten minutes as it used to.

Read-only and transport-specific: Redis lists under the deployment's key prefix (LRANGE, like
queue_depths), the embedded SQLAlchemy broker's visible rows. None for another transport:
the caller cannot tell then, and falls back to its old rule.
"""

from __future__ import annotations

import base64
import json
import logging

from service.core.queue import GPU_QUEUE, RUN_JOB, celery_app

logger = logging.getLogger(__name__)

MAX_SCANNED = 200_000  # messages read per scan; a deeper queue is read in part


def waiting_job_ids(queue: str = GPU_QUEUE) -> set[str] | None:
    """Ids of the jobs whose run message waits in `queue` (not yet taken by a worker)."""
    with celery_app().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        driver = conn.transport.driver_type
        if driver == "redis":
            raw = _redis_messages(channel, queue)
        elif driver == "sql":  # kombu's SQLAlchemy transport (the embedded default)
            raw = _sqla_messages(channel, queue)
        else:
            return None
    ids = set()
    for payload in raw:
        job_id = job_id_of(payload)
        if job_id is not None:
            ids.add(job_id)
    return ids


def job_id_of(payload: bytes | str | dict) -> str | None:
    """The job id a Celery (protocol 2) run message carries, else None."""
    try:
        message = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
        if message.get("headers", {}).get("task") != RUN_JOB:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except Exception:  # not ours, or not a message: nothing to compare
        return None


def _redis_messages(channel, queue: str) -> list[bytes]:
    import redis

    prefix = channel.global_keyprefix or ""
    client = redis.Redis(connection_pool=channel.client.connection_pool)  # no key rewriting
    keys = [prefix + (f"{queue}{channel.sep}{step}" if step else queue)
            for step in channel.priority_steps]
    messages: list[bytes] = []
    for key in keys:
        messages.extend(client.lrange(key, 0, MAX_SCANNED - 1))
    return messages


def _sqla_messages(channel, queue: str) -> list[str]:
    message_cls = channel.message_cls
    rows = (channel._query_all(queue).filter(message_cls.visible == True)  # noqa: E712
            .limit(MAX_SCANNED).all())
    payloads = [row.payload for row in rows]
    channel.session.commit()  # end the read transaction: the SQLite file stays unlocked
    return payloads
