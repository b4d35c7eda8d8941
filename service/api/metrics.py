"""Prometheus metrics.

Two sources, because the API runs several processes and the work happens elsewhere:
- per-request counters and latency histograms, shared across the API's processes through
  prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before this import);
- job figures (queue depth, jobs by status, durations, tokens, KV kept fraction, cost)
  computed from the database and the broker at scrape time, so they are right however many
  API processes and workers run, on whatever machines. Cached for a few seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import case, func, select

from service.core.state import on_reset

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
FRACTION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

HTTP_REQUESTS = Counter("namm_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("namm_http_request_duration_seconds", "HTTP request latency",
                         ["method", "route"], buckets=LATENCY_BUCKETS)
JOBS_SUBMITTED = Counter("namm_jobs_submitted_total", "jobs accepted by POST /v1/jobs")
ENQUEUE_FAILURES = Counter("namm_enqueue_failures_total",
                           "jobs stored but not enqueued (broker down; the sweeper retries)")


class MetricsMiddleware:
    """Pure ASGI middleware: counts requests and times them by route template."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - start)
            HTTP_REQUESTS.labels(method, template, str(status_holder["status"])).inc()


def _histogram(name: str, doc: str, column, buckets, where=None) -> HistogramMetricFamily:
    from service.core.db import session_factory
    from service.models import UsageRecord

    exprs = [func.sum(case((column <= b, 1), else_=0)) for b in buckets]
    query = select(func.count(UsageRecord.id), func.coalesce(func.sum(column), 0.0), *exprs)
    with session_factory()() as session:
        row = session.execute(query).one()
    count, total = int(row[0] or 0), float(row[1] or 0.0)
    cumulative = [(str(float(b)), int(v or 0)) for b, v in zip(buckets, row[2:])]
    cumulative.append(("+Inf", count))
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], cumulative, total)
    return family


class JobStatsCollector:
    """Scrape-time figures from the database and the broker."""

    def __init__(self, cache_s: float = 5.0):
        self.cache_s = cache_s
        self._cached: tuple[float, list] | None = None
        self._lock = threading.Lock()

    def forget(self) -> None:
        with self._lock:
            self._cached = None

    def collect(self):
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self.cache_s:
                self._cached = (time.monotonic(), self._gather())
            return list(self._cached[1])

    def _gather(self) -> list:
        from service.core.db import session_factory
        from service.core.queue import queue_depths
        from service.models import Job, UsageRecord

        families = []
        up = GaugeMetricFamily("namm_component_up", "1 when the component answered the scrape",
                               labels=["component"])
        # namm_queue_depth{gpu} is the jobs still waiting (status queued, from the database);
        # the broker's own count also holds messages of cancelled jobs and duplicates the
        # sweeper sent, so it is namm_broker_messages, apart (issue 13: 79 read with 8 queued)
        messages: dict[str, int] | None = None
        try:
            messages = queue_depths(("gpu", "cpu"))
            broker = GaugeMetricFamily("namm_broker_messages", "messages in the broker's queue "
                                       "(cancelled jobs' messages included)", labels=["queue"])
            for queue, n in messages.items():
                broker.add_metric([queue], n)
            families.append(broker)
            up.add_metric(["broker"], 1)
        except Exception as exc:
            logger.warning("metrics: broker unreachable (%s)", type(exc).__name__)
            up.add_metric(["broker"], 0)
        try:
            with session_factory()() as session:
                by_status = dict(session.execute(
                    select(Job.status, func.count()).group_by(Job.status)).all())
                sums = session.execute(select(
                    func.coalesce(func.sum(UsageRecord.tokens_in), 0),
                    func.coalesce(func.sum(UsageRecord.tokens_out), 0),
                    func.coalesce(func.sum(UsageRecord.cost_micro_usd), 0),
                    func.coalesce(func.sum(UsageRecord.full_cache_cost_micro_usd), 0),
                    func.coalesce(func.sum(UsageRecord.kv_bytes_peak), 0),
                    func.coalesce(func.sum(UsageRecord.kv_bytes_full_peak), 0),
                )).one()
            depth = GaugeMetricFamily("namm_queue_depth", "work still waiting: queued jobs "
                                      "(gpu), messages (cpu)", labels=["queue"])
            depth.add_metric(["gpu"], int(by_status.get("queued", 0)))
            if messages is not None:
                depth.add_metric(["cpu"], messages["cpu"])
            families.append(depth)
            jobs = GaugeMetricFamily("namm_jobs", "jobs by status", labels=["status"])
            for status in ("waiting", "queued", "running", "done", "failed", "cancelled"):
                jobs.add_metric([status], int(by_status.get(status, 0)))
            tokens = CounterMetricFamily("namm_tokens_processed", "tokens processed by finished "
                                         "jobs", labels=["direction"])
            tokens.add_metric(["in"], int(sums[0]))
            tokens.add_metric(["out"], int(sums[1]))
            cost = CounterMetricFamily("namm_cost_micro_usd", "cost of finished jobs (policy), "
                                       "and the full-cache counterfactual of those that have one "
                                       "(full; mostly estimated: /v1/reports/cost says which)",
                                       labels=["cache"])
            cost.add_metric(["policy"], int(sums[2]))
            cost.add_metric(["full"], int(sums[3]))
            kv_bytes = CounterMetricFamily("namm_kv_bytes_peak", "sum of per-job KV cache peaks",
                                           labels=["cache"])
            kv_bytes.add_metric(["policy"], int(sums[4]))
            kv_bytes.add_metric(["full"], int(sums[5]))
            families += [jobs, tokens, cost, kv_bytes,
                         _histogram("namm_job_duration_seconds", "model seconds per finished job",
                                    UsageRecord.seconds, DURATION_BUCKETS),
                         _histogram("namm_kv_kept_fraction", "KV cache fraction kept at answer "
                                    "time per finished job", UsageRecord.kv_kept_fraction,
                                    FRACTION_BUCKETS)]
            up.add_metric(["database"], 1)
        except Exception as exc:
            logger.warning("metrics: database unreachable (%s)", type(exc).__name__)
            up.add_metric(["database"], 0)
        families.append(up)
        return families


_job_stats = JobStatsCollector()
on_reset(_job_stats.forget)


def render_metrics() -> tuple[bytes, str]:
    jobs = CollectorRegistry()
    jobs.register(_job_stats)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        requests = CollectorRegistry()
        multiprocess.MultiProcessCollector(requests)
    else:  # a single process: its default registry holds the request metrics
        from prometheus_client import REGISTRY as requests
    return generate_latest(requests) + generate_latest(jobs), CONTENT_TYPE_LATEST
