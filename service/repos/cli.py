"""`python -m service.repos submit PATH`: pack a local repository, submit it as a batch, follow
its progress with a bar, and save the report.

    python -m service.repos submit . --url http://127.0.0.1:8000 --key "$NAMM_API_KEY" \\
        --policy surprisal --budget 0.25 --max-new-tokens 96 --report report.md

The archive leaves out version-control folders and the vendored folders ingestion would skip
anyway (node_modules/, .venv/, ...), so uploads stay small; everything else goes, and the
server decides (.gitignore, binaries, caps) and lists what it skipped in the report.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time
from pathlib import Path

import httpx

from service.repos.ingest import VCS_DIRS, VENDORED_DIRS

FINISHED = ("done", "failed", "cancelled")


def pack(path: Path) -> bytes:
    """A .tar.gz of `path` (one top-level folder), without VCS and vendored folders or links."""
    path = path.resolve()
    if not path.is_dir():
        raise SystemExit(f"{path} is not a directory")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = set(Path(info.name).parts[1:])
        if parts & (VCS_DIRS | VENDORED_DIRS) or info.issym() or info.islnk():
            return None
        if not (info.isfile() or info.isdir()):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname=path.name or "repo", filter=keep)
    return buffer.getvalue()


def follow(client: httpx.Client, batch_id: str, *, poll_s: float = 1.0,
           out=sys.stderr) -> dict:
    """Poll the batch until it finishes, drawing a tqdm bar of files settled."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="file", file=out, dynamic_ncols=True, desc="queued")
    try:
        while True:
            response = client.get(f"/v1/batches/{batch_id}")
            response.raise_for_status()
            batch = response.json()
            progress = batch["progress"]
            if progress["files_total"] and bar.total != progress["files_total"]:
                bar.total = progress["files_total"]
            settled = progress["files_done"] + progress["files_failed"]
            bar.update(settled - bar.n)
            bar.set_description(batch["status"])
            bar.set_postfix(tokens=progress["tokens_read"], failed=progress["files_failed"],
                            skipped=progress["files_skipped"], refresh=False)
            bar.refresh()
            if batch["status"] in FINISHED:
                return batch
            time.sleep(poll_s)
    finally:
        bar.close()


def submit(args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("NAMM_API_KEY")
    if not key:
        print("an API key is needed: --key or NAMM_API_KEY", file=sys.stderr)
        return 2
    data = pack(Path(args.path))
    print(f"packed {args.path}: {len(data)} bytes", file=sys.stderr)
    fields = {"max_new_tokens": str(args.max_new_tokens), "tasks": args.tasks}
    if args.policy:
        fields["policy"] = args.policy
    if args.budget:
        fields["budget"] = args.budget
    with httpx.Client(base_url=args.url, headers={"X-API-Key": key}, timeout=120) as client:
        response = client.post("/v1/batches", data=fields,
                               files={"file": (f"{Path(args.path).resolve().name}.tar.gz", data)})
        if response.status_code != 202:
            print(f"refused ({response.status_code}): {response.text}", file=sys.stderr)
            return 1
        batch_id = response.json()["id"]
        print(f"batch {batch_id}", file=sys.stderr)
        if args.no_follow:
            print(batch_id)
            return 0
        batch = follow(client, batch_id, poll_s=args.poll)
        if args.report:
            fmt = "json" if args.report.endswith(".json") else "md"
            report = client.get(f"/v1/batches/{batch_id}/report", params={"format": fmt})
            Path(args.report).write_bytes(report.content)
            print(f"report written to {args.report}", file=sys.stderr)
    print(f"batch {batch_id}: {batch['status']}"
          + (f" ({batch['error']})" if batch.get("error") else ""), file=sys.stderr)
    return 0 if batch["status"] == "done" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.repos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("submit", help="pack, submit and follow a local repository")
    sub.add_argument("path")
    sub.add_argument("--url", default=os.environ.get("NAMM_URL", "http://127.0.0.1:8000"))
    sub.add_argument("--key", default=None, help="API key (default: $NAMM_API_KEY)")
    sub.add_argument("--policy", default=None)
    sub.add_argument("--budget", default=None, help='0.25 or \'{"tokens": 2048}\'')
    sub.add_argument("--max-new-tokens", type=int, default=96)
    sub.add_argument("--tasks", default="summaries,overview")
    sub.add_argument("--report", default=None, help="save the report (.md or .json)")
    sub.add_argument("--poll", type=float, default=1.0, help="seconds between progress reads")
    sub.add_argument("--no-follow", action="store_true", help="print the batch id and return")
    args = parser.parse_args(argv)
    return submit(args)
