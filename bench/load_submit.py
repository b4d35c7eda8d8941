"""Load test of job submission: N concurrent clients POST /v1/jobs over loopback for a fixed
time; prints p50/p99 latency and submissions/s.

Each run starts the real API (LitServe) as a subprocess on a fresh database, and every
submission is committed to it and enqueued on a real broker (Redis for PostgreSQL, kombu's
SQLAlchemy transport for SQLite). By default no worker consumes the queue: this measures the API
alone. `--worker busy` measures it again, in the same run, while the model worker (the real
Celery worker, the default model) runs the submitted jobs on the same machine, the realistic
case on a small host; `--model-nice` sets that worker's CPU priority (NAMM_WORKER__MODEL_NICE),
so priorities can be compared side by side.

  .venv/bin/python bench/load_submit.py --backend pg --backend sqlite --concurrency 50 --duration 20
  .venv/bin/python bench/load_submit.py --backend pg --worker none --worker busy \
      --model-nice 0 --model-nice 10 --concurrency 50 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOCUMENT = ("Quarterly report. Revenue was 48.6 million euros. The largest contract was signed "
            "with Helvetia Foods, worth 3.2 million euros over three years. ") * 8


def pg_database() -> tuple[str, callable]:
    import psycopg

    admin = psycopg.connect(host="127.0.0.1", user=os.environ.get("PGUSER", "postgres"),
                            dbname="test", autocommit=True)
    name = f"namm_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop():
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    user = os.environ.get("PGUSER", "postgres")
    return f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}", drop


def environment(backend: str, tmp: Path, args) -> tuple[dict[str, str], callable]:
    env = dict(os.environ)
    cleanup = lambda: None  # noqa: E731
    if backend == "pg":
        url, cleanup = pg_database()
        env["NAMM_DATABASE__URL"] = url
        env["NAMM_BROKER__URL"] = "redis://127.0.0.1:6379/0"
        env["NAMM_BROKER__KEY_PREFIX"] = f"namm-bench-{uuid.uuid4().hex[:6]}:"
        env["NAMM_DATABASE__POOL_SIZE"] = str(args.pool_size)
    else:
        env["NAMM_DATABASE__URL"] = f"sqlite:///{tmp / 'namm.db'}"
        env["NAMM_BROKER__URL"] = f"sqla+sqlite:///{tmp / 'broker.db'}"
    env["NAMM_API__INFERENCE_WORKERS"] = str(args.inference_workers)
    env["NAMM_API__LOG_LEVEL"] = "warning"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "metrics")
    return env, cleanup


def prepare(env: dict[str, str]) -> str:
    os.environ.update({k: v for k, v in env.items() if k.startswith(("NAMM_", "PROMETHEUS"))})
    from service.core.state import reset_process_state

    reset_process_state()
    from service.core import migrate
    from service.core.db import session_scope
    from service.core.queue import queue_depths
    from service.api.keys import get_or_create_tenant, issue_key

    migrate.upgrade()
    queue_depths()
    with session_scope() as s:
        key = issue_key(s, get_or_create_tenant(s, "bench")).raw_key
    reset_process_state()
    return key


def request_bytes(port: int, key: str) -> bytes:
    import json

    body = json.dumps({"document": DOCUMENT, "questions": ["Who signed the largest contract?"],
                       "policy": "surprisal", "budget": 0.3, "max_new_tokens": 32}).encode()
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def client_loop(port: int, payload: bytes, stop_at: float, record: bool,
                      latencies: list[float], errors: list[int], interval: float = 0.0,
                      phase: float = 0.0) -> None:
    """One keep-alive connection sending requests back to back.

    A minimal HTTP/1.1 client on raw asyncio streams: the load generator shares the machine's
    two cores with the server, and a full client library would take a large part of them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # paced clients start at evenly spread phases, so together they offer a steady rate
        # rather than one burst of `concurrency` requests every interval
        next_at = time.perf_counter() + phase * interval - interval
        while time.perf_counter() < stop_at:
            if interval:  # paced (open-loop) client: send on schedule, not on reply
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            start = time.perf_counter()
            try:
                writer.write(payload)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                if record:
                    errors.append(0)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            if record:
                (latencies.append(time.perf_counter() - start) if status == 202
                 else errors.append(status))
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def load(port: int, key: str, concurrency: int, duration: float, warmup: float,
               rate: float = 0.0) -> dict:
    payload = request_bytes(port, key)
    interval = concurrency / rate if rate else 0.0
    warm_stop = time.perf_counter() + warmup
    await asyncio.gather(*(client_loop(port, payload, warm_stop, False, [], [])
                           for _ in range(concurrency)))
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    stop_at = started + duration
    await asyncio.gather(*(client_loop(port, payload, stop_at, True, latencies, errors, interval,
                                       phase=i / concurrency)
                           for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0

    return {"ok": len(latencies), "errors": len(errors), "rate": len(latencies) / elapsed,
            "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
            "max": latencies[-1] * 1000 if latencies else 0,
            "mean": statistics.fmean(latencies) * 1000 if latencies else 0}


def wait_until_busy(url: str, key: str, timeout_s: float = 300.0) -> None:
    """Submit one job and wait until the worker runs it (model loaded, a job in progress)."""
    import json
    import urllib.request

    body = json.dumps({"document": DOCUMENT * 4, "policy": "surprisal", "budget": 0.3,
                       "max_new_tokens": 64}).encode()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    request = urllib.request.Request(f"{url}/v1/jobs", body, headers)
    job = json.load(urllib.request.urlopen(request, timeout=30))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = json.load(urllib.request.urlopen(urllib.request.Request(
            f"{url}/v1/jobs/{job['id']}", headers=headers), timeout=30))["status"]
        if status in ("running", "done"):
            return
        time.sleep(0.5)
    raise RuntimeError("the worker did not start a job in time")


def run_backend(backend: str, args, worker: str = "none", nice: int = 0) -> dict:
    from service.dev.processes import ServiceProcesses, api_command, worker_commands

    with tempfile.TemporaryDirectory(prefix=f"namm-bench-{backend}-") as tmpdir:
        tmp = Path(tmpdir)
        env, cleanup = environment(backend, tmp, args)
        env["NAMM_WORKER__MODEL_NICE"] = str(nice)
        procs = ServiceProcesses(env=env, log_dir=tmp / "logs")
        try:
            key = prepare(env)
            port = args.port
            procs.start("api", api_command(port, api_servers=args.api_servers))
            url = f"http://127.0.0.1:{port}"
            procs.wait_healthy(url, timeout_s=120)
            if worker == "busy":
                procs.start("worker", worker_commands()["worker"])
                wait_until_busy(url, key)
            stats = asyncio.run(load(port, key, args.concurrency, args.duration, args.warmup,
                                     args.rate))
            procs.check_alive()
        finally:
            procs.stop()
            if backend == "pg":
                import redis

                client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
                keys = list(client.scan_iter(env["NAMM_BROKER__KEY_PREFIX"] + "*"))
                if keys:
                    client.delete(*keys)
            cleanup()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", choices=["pg", "sqlite"])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--api-servers", type=int, default=2, help="uvicorn processes")
    parser.add_argument("--inference-workers", type=int, default=1,
                        help="LitServe worker processes (validate + store + enqueue)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offered submissions/s shared by the clients (0: each client sends "
                             "its next request as soon as the previous one is answered)")
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--worker", action="append", choices=["none", "busy"],
                        help="none: the API alone; busy: the model worker runs the submitted "
                             "jobs meanwhile (repeat for both, side by side)")
    parser.add_argument("--model-nice", action="append", type=int,
                        help="the busy worker's nice value (repeat to compare; default 10)")
    args = parser.parse_args(argv)
    backends = args.backend or ["pg", "sqlite"]
    runs = [("none", 0)] if not args.worker else []
    for worker in args.worker or []:
        for nice in ([0] if worker == "none" else (args.model_nice or [10])):
            runs.append((worker, nice))

    rows = []
    for backend in backends:
        for worker, nice in runs:
            stats = run_backend(backend, args, worker, nice)
            label = "API alone" if worker == "none" else f"busy model worker, nice {nice}"
            rows.append((backend, label, stats))
            print(f"{backend}, {label}: {stats['rate']:.0f} submissions/s, p50 "
                  f"{stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms, errors {stats['errors']}",
                  file=sys.stderr)

    mode = f"paced at {args.rate:.0f}/s offered" if args.rate else "closed loop (max rate)"
    print(f"\n{mode}, concurrency {args.concurrency}, {args.duration:.0f} s, api servers "
          f"{args.api_servers}, inference workers {args.inference_workers}, cpus {os.cpu_count()}")
    print("| backend | broker | worker | submissions | errors | submissions/s | p50 ms | p90 ms "
          "| p99 ms | max ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, label, s in rows:
        broker = "Redis" if backend == "pg" else "SQLAlchemy/SQLite"
        name = "PostgreSQL" if backend == "pg" else "SQLite (WAL)"
        print(f"| {name} | {broker} | {label} | {s['ok']} | {s['errors']} | {s['rate']:.0f} | "
              f"{s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
