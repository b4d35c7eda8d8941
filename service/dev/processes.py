"""Start and stop the service's processes (API, Celery GPU and CPU workers, beat) as subprocesses.

Used by `make run` (service/local.py) and by the integration tests' fixtures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def worker_command(queues: str = "gpu,cpu", name: str = "worker") -> list[str]:
    # prefork with one child: the model is loaded in the child, torch stays out of the parent
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
            "-c", "1", "--pool", "prefork", "-n", f"{name}@%h", "-l", "info",
            "--without-gossip", "--without-mingle"]


def worker_commands() -> dict[str, list[str]]:
    """The two workers of the embedded default, as in docker-compose.yml: `worker` serves only
    the model's queue (`gpu`, one job at a time); `worker-cpu` serves ingestion, the beat's ticks
    and sweeps (`cpu`) and never loads the model, so control work never waits behind a job."""
    return {"worker": worker_command("gpu", "worker-gpu"),
            "worker-cpu": worker_command("cpu", "worker-cpu")}


def beat_command(schedule_file: Path) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "-l", "info",
            "-s", str(schedule_file)]


def api_command(port: int, api_servers: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "service.api.server", "--host", "127.0.0.1", "--port", str(port)]
    if api_servers:
        cmd += ["--api-servers", str(api_servers)]
    return cmd


@dataclass
class ServiceProcesses:
    env: dict[str, str]
    log_dir: Path
    cwd: Path = Path(__file__).resolve().parents[2]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        # own process group: stopping it reaches the prefork children too
        proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def wait_healthy(self, url: str, timeout_s: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                response = httpx.get(f"{url}/health", timeout=5.0)
                last = response.text
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"service at {url} not healthy after {timeout_s} s: {last}")

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self.procs.clear()
