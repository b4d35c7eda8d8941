"""`make run`: the whole service on this machine with nothing else installed.

SQLite (WAL) for the database, kombu's SQLAlchemy transport on another SQLite file as the
broker, two real Celery worker processes (queue gpu: the default model; queue cpu: ingestion,
ticks, sweeps), beat, and the LitServe API. Prints the URL and a fresh API key for the `local` tenant, then runs the demo.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY_LABEL = "make-run"


def local_environment(var: Path) -> dict[str, str]:
    """Environment for every process: absolute SQLite paths, so any working directory works."""
    env = dict(os.environ)
    env.setdefault("NAMM_DATABASE__URL", f"sqlite:///{var / 'namm.db'}")
    env.setdefault("NAMM_BROKER__URL", f"sqla+sqlite:///{var / 'broker.db'}")
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(var / "metrics"))
    env.setdefault("NAMM_MEMORIES__STORE_URL", str(var / "memories"))  # stored documents
    env.setdefault("NAMM_WORKER__BATCH_MAX_JOBS", "4")  # queued jobs share one model batch
    return env


def prepare(env: dict[str, str]) -> str:
    """Migrate, create the broker's tables, and issue a new key for the local tenant."""
    os.environ.update(env)
    from service.core.state import reset_process_state

    reset_process_state()
    from service.core import migrate
    from service.core.db import session_scope
    from service.core.queue import queue_depths
    from service.api.keys import get_or_create_tenant, issue_key, revoke_keys

    migrate.upgrade()
    queue_depths()  # creates kombu's tables now, before several processes race to do it
    with session_scope() as session:
        tenant = get_or_create_tenant(session, "local")
        revoke_keys(session, tenant, label=KEY_LABEL)  # keys of earlier runs stop working
        return issue_key(session, tenant, label=KEY_LABEL).raw_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("NAMM_API__PORT", 8000)))
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="state and logs folder")
    parser.add_argument("--no-demo", action="store_true", help="do not submit the sample job")
    parser.add_argument("--exit-after-demo", action="store_true",
                        help="stop everything once the demo job has finished")
    args = parser.parse_args(argv)

    var = args.var.resolve()
    var.mkdir(parents=True, exist_ok=True)
    env = local_environment(var)
    key = prepare(env)

    from service.dev.demo import curl_example, run_demo
    from service.dev.processes import ServiceProcesses, api_command, beat_command, worker_commands

    url = f"http://127.0.0.1:{args.port}"
    procs = ServiceProcesses(env=env, log_dir=var / "logs")
    status = 0
    try:
        for name, argv in worker_commands().items():
            procs.start(name, argv)
        procs.start("beat", beat_command(var / "celerybeat-schedule"))
        procs.start("api", api_command(args.port))
        procs.wait_healthy(url)
        print(f"\nNAMM service running at {url}   (docs: {url}/docs, logs: {var / 'logs'})")
        print(f"API key for tenant 'local' (shown once; new on every `make run`):\n  {key}\n")
        print("Try it:")
        print(f"  export NAMM_API_KEY={key}")
        print("  " + curl_example(url).replace("\n", "\n  ") + "\n")
        if not args.no_demo:
            status = run_demo(url, key)
        if args.exit_after_demo:
            return status
        print("\nService is running; press Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while True:
            procs.check_alive()
            time.sleep(2)
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
