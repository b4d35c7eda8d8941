"""Start the API: `python -m service.api.server` (LitServe: uvicorn processes + inference
workers); `python -m service.server` forwards here.

PROMETHEUS_MULTIPROC_DIR must exist before prometheus_client is imported anywhere, so this
entry point sets it up first and imports the app afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile


def _prepare_metrics_dir() -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)  # counters of a previous run would be summed in
    else:
        path = tempfile.mkdtemp(prefix="namm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    _prepare_metrics_dir()

    from service.core.settings import get_settings, safe_url

    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=settings.api.host)
    parser.add_argument("--port", type=int, default=settings.api.port)
    parser.add_argument("--api-servers", type=int, default=settings.api.num_api_servers)
    args = parser.parse_args(argv)

    logging.basicConfig(level=settings.api.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).warning(
        "API on http://%s:%s  database %s  broker %s", args.host, args.port,
        safe_url(settings.database.url), safe_url(settings.broker.url))

    from service.api.app import build_server

    server = build_server()
    # SIGTERM (docker stop, systemd, Kubernetes) used to kill this process alone, leaving its
    # uvicorn and inference children running and accepting jobs. Taken as Ctrl-C instead, the
    # shutdown of service/api/litserve.py runs: every uvicorn process at once gives notice
    # (503, Connection: close) for drain_notice_s, closes its listener and finishes its open
    # requests; then the inference workers and the manager stop, all within drain_timeout_s.
    server.uvicorn_graceful_timeout = max(
        0.5, settings.api.drain_timeout_s - settings.api.drain_notice_s - 1.0)
    signal.signal(signal.SIGTERM, _interrupt)
    server.run(host=args.host, port=args.port, num_api_servers=args.api_servers,
               log_level=settings.api.log_level, generate_client_file=False,
               access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
