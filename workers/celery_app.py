"""The workers' Celery application: `celery -A workers.celery_app worker|beat`.

The same factory as the API's producer (service/core/queue.py), plus the task modules; the
model is loaded lazily in each prefork child (workers/model.py), never in the parent.
"""

from __future__ import annotations

from service.core.queue import make_celery

app = make_celery(include=("workers.tasks", "workers.batches", "workers.shadow"))
