"""Submission load while a real worker is busy running jobs (issue 13): nothing lost.

Starts PostgreSQL + Redis, a real Celery worker (the default model, on this machine's CPU),
beat (the sweeper) and the API; warms the worker with one job; then N clients submit for
`--duration` seconds while the worker runs jobs. Afterwards it checks the books: every 202
is a stored job, and every stored job is done, running, or has its message waiting in
Redis (`service/core/broker_scan.py`) or taken by the worker and not yet acknowledged (kombu's
`unacked` hash: the worker has the message and has not marked the job running yet): accepted =
stored = done + running + waiting + taken, no queued job without a message, no job twice.
Prints one table row.

  .venv/bin/python bench/load_with_workers.py --concurrency 20 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load_submit import load, pg_database  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=0.0, help="offered submissions/s (0: max)")
    parser.add_argument("--port", type=int, default=8193)
    args = parser.parse_args(argv)

    import httpx
    from sqlalchemy import func, select

    from service.dev.processes import ServiceProcesses, api_command, beat_command, worker_command

    db_url, drop = pg_database()
    prefix = f"namm-bench-busy-{uuid.uuid4().hex[:6]}:"
    with tempfile.TemporaryDirectory(prefix="namm-busy-") as tmpdir:
        tmp = Path(tmpdir)
        env = dict(os.environ, NAMM_DATABASE__URL=db_url,
                   NAMM_BROKER__URL="redis://127.0.0.1:6379/0", NAMM_BROKER__KEY_PREFIX=prefix,
                   NAMM_API__LOG_LEVEL="warning", PROMETHEUS_MULTIPROC_DIR=str(tmp / "m"))
        os.environ.update({k: v for k, v in env.items() if k.startswith(("NAMM_", "PROM"))})
        from service.api.keys import get_or_create_tenant, issue_key
        from service.core import migrate
        from service.core.db import session_scope
        from service.core.queue import queue_depths
        from service.core.state import reset_process_state

        reset_process_state()
        migrate.upgrade()
        queue_depths()
        with session_scope() as s:
            key = issue_key(s, get_or_create_tenant(s, "bench")).raw_key
        procs = ServiceProcesses(env=env, log_dir=tmp / "logs")
        url = f"http://127.0.0.1:{args.port}"
        try:
            procs.start("worker", worker_command())
            procs.start("beat", beat_command(tmp / "beat-schedule"))
            procs.start("api", api_command(args.port, api_servers=2))
            procs.wait_healthy(url, timeout_s=180)
            warm = httpx.post(f"{url}/v1/jobs", headers={"X-API-Key": key},
                              json={"document": "Warm-up.", "max_new_tokens": 4}).json()["id"]
            while httpx.get(f"{url}/v1/jobs/{warm}", headers={"X-API-Key": key}
                            ).json()["status"] not in ("done", "failed"):
                time.sleep(0.5)
            started = time.time()
            stats = asyncio.run(load(args.port, key, args.concurrency, args.duration, 0.0,
                                     args.rate))  # no untimed warm-up: every 202 is counted
            elapsed = time.time() - started
            procs.check_alive()
            from service.core.broker_scan import waiting_job_ids
            from service.models import Job

            with session_scope() as s:
                by_status = dict(s.execute(select(Job.status, func.count())
                                           .group_by(Job.status)).all())
                queued = set(s.scalars(select(Job.id).where(Job.status == "queued")))
            waiting = waiting_job_ids("gpu") or set()
            taken = taken_job_ids(prefix)
        finally:
            procs.stop()
            import redis

            client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
            stale = list(client.scan_iter(prefix + "*"))
            if stale:
                client.delete(*stale)
            reset_process_state()
            drop()

    stored = sum(by_status.values()) - 1  # less the warm-up job
    done, running = by_status.get("done", 1) - 1, by_status.get("running", 0)
    in_queue, in_worker = queued & waiting, (queued - waiting) & taken
    lost = len(queued - waiting - taken)
    print(f"\nPostgreSQL + Redis, 1 worker (-c 1, default model on CPU, busy throughout), "
          f"{args.concurrency} clients, {args.duration:.0f} s, cpus {os.cpu_count()}")
    print("| accepted (202) | errors | submissions/s | p50 ms | p99 ms | stored | done "
          "| running | queued, message waiting | queued, message taken by the worker "
          "| queued, no message |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {stats['ok']} | {stats['errors']} | {stats['rate']:.0f} | {stats['p50']:.1f} | "
          f"{stats['p99']:.1f} | {stored} | {done} | {running} | {len(in_queue)} | "
          f"{len(in_worker)} | {lost} |")
    balanced = stored == done + running + len(in_queue) + len(in_worker)
    print(f"(wall {elapsed:.0f} s) accepted == stored: {stats['ok'] == stored}; stored == done + "
          f"running + waiting + taken: {balanced}")
    return 0 if stats["errors"] == 0 and lost == 0 and stats["ok"] == stored else 1


def taken_job_ids(key_prefix: str) -> set[str]:
    """Jobs whose message a worker holds unacknowledged (kombu's Redis `unacked` hash)."""
    import json

    import redis

    from service.core.broker_scan import job_id_of

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    ids = {job_id_of(json.loads(raw)[0]) for raw in client.hvals(key_prefix + "unacked")}
    return {job_id for job_id in ids if job_id is not None}


if __name__ == "__main__":
    sys.exit(main())
