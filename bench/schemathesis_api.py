"""Check that the OpenAPI document describes the API exactly: schemathesis (issue 23 item 10),
every check, against a real API process on a fresh database (SQLite or PostgreSQL + Redis).

The API is started as bench/fuzz_api.py starts it (its `start_api`, one process, no worker),
with git clones allowed from `localhost` only: the document states the hosts an allow-list
names, while whether a public name resolves to public addresses is DNS's answer, which no
schema can state (and this machine has no DNS). schemathesis reads /openapi.json and sends
the cases with a tenant's key, then the admin routes' with an admin key; uploads are real
files of the media types the document names (bench/schemathesis_hooks.py). The one rule
OpenAPI cannot state is in bench/schemathesis.toml. Prints schemathesis' summaries
(operations, test cases, failures) and exits with the worse status.

  .venv/bin/python bench/schemathesis_api.py --backend pg --max-examples 100
  .venv/bin/python bench/schemathesis_api.py --backend sqlite --max-examples 100
  .venv/bin/python bench/schemathesis_api.py --backend sqlite --max-examples 5 \
      --phases examples,coverage    # the suite's bounded run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fuzz_api import start_api  # noqa: E402

CONFIG = ROOT / "bench" / "schemathesis.toml"  # the one rule OpenAPI cannot state, explained
# every operation with a tenant's key (admin routes answer it 403), then the admin routes with
# an admin key, last: they may revoke keys, the tenant's among them
PASSES = (("user", None), ("admin", "^/v1/admin/"))
# the deployment the document is checked against (see above)
SETTINGS = {"NAMM_BATCHES__GIT_ALLOW_PUBLIC_HOSTS": "false",
            "NAMM_BATCHES__GIT_ALLOWED_HOSTS": '["localhost"]'}


def schemathesis_command(url: str, key: str, max_examples: int, seed: int,
                         phases: str | None = None, workers: int = 1) -> list[str]:
    command = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(CONFIG),
               "run", f"{url}/openapi.json",
               "--checks", "all", "-H", f"X-API-Key: {key}", "--max-examples", str(max_examples),
               "--seed", str(seed), "--workers", str(workers), "--no-color",
               "--request-timeout", "30", "--suppress-health-check", "all"]
    return command + (["--phases", phases] if phases else [])


def run(backend: str, max_examples: int, seed: int, phases: str | None = None,
        workers: int = 1) -> subprocess.CompletedProcess:
    """Start the API, run schemathesis against it (PASSES), stop the API; the CLI's output
    and status."""
    with tempfile.TemporaryDirectory(prefix="namm-schemathesis-") as tmpdir:
        url, keys, procs, env, cleanup = start_api(backend, Path(tmpdir), SETTINGS)
        try:
            runs = []
            for key, only in PASSES:
                # the key is a secret: it goes in the header, never into what is printed
                command = schemathesis_command(url, keys[key], max_examples, seed, phases, workers)
                runs.append(subprocess.run(
                    command + (["--include-path-regex", only] if only else []),
                    capture_output=True, text=True, timeout=3600, cwd=tmpdir,  # its cache too
                    env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
                         "PYTHONPATH": os.pathsep.join(filter(None, [
                             str(ROOT / "bench"), os.environ.get("PYTHONPATH")]))}))
            procs.check_alive()
        finally:
            procs.stop()
            if backend == "pg":
                import redis

                client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
                stale = list(client.scan_iter(env["NAMM_BROKER__KEY_PREFIX"] + "*"))
                if stale:
                    client.delete(*stale)
            cleanup()
    # one answer for both passes: their reports one after the other, the worse status
    result = subprocess.CompletedProcess(
        [r.args for r in runs], max(r.returncode for r in runs),
        "\n".join(r.stdout for r in runs), "\n".join(r.stderr for r in runs))
    for secret in keys.values():
        result.stdout = result.stdout.replace(secret, "namm_***")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["pg", "sqlite"], default="pg")
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--phases", default=None, help="e.g. examples,coverage,fuzzing,stateful")
    # one: hypothesis describes lambdas by parsing their source, which Python 3.11 cannot do
    # in two threads at once (a rare "AST constructor recursion depth mismatch" error)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.backend, args.max_examples, args.seed, args.phases, args.workers)
    print(result.stdout)
    print(f"backend {args.backend}, max-examples {args.max_examples}, seed {args.seed}, "
          f"exit {result.returncode}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
