"""Fuzz the REST API from its own OpenAPI description: no input may give a 5xx.

A small generator of our own (issue 13, before schemathesis was locked; the contract check
with schemathesis is bench/schemathesis_api.py): for every operation in /openapi.json it sends cases built from the schema (valid
values, boundary numbers, wrong types, NUL, lone surrogates, huge and nested values, missing
and extra fields, bad keys, garbage bodies), concurrently, against a real API process on a
real database, and checks that no answer is a 5xx and that every 2xx JSON answer has the
documented top-level shape. Prints one row per operation and the number of cases.

  .venv/bin/python bench/fuzz_api.py --backend pg --cases 2000
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import sys
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NASTY = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff y", "\U0001F4A5" * 8, "é", "\u202e",
         "../../etc/passwd", "' OR 1=1 --", "<script>alert(1)</script>", "null", "true", "-1",
         "1e309", "9" * 40, "a" * 5000, "\n" * 50, "%00", "\\", "{}", "[]", "0x10",
         "00000000-0000-0000-0000-000000000000", str(uuid.uuid4())]
INTS = [0, 1, -1, 2, 50, 2**31 - 1, 2**31, -(2**31), 2**63, -(2**63) - 1, 10**30]
SECRET_MARKERS = ("key_hash", "password", "namm_")


@dataclass
class Case:
    method: str
    path: str  # with path parameters filled in, percent-encoded
    query: str
    headers: dict
    body: bytes | None = None
    files: dict | None = None
    data: dict | None = None


@dataclass
class Row:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)  # 5xx and shape violations, first few kept


class Generator:
    def __init__(self, spec: dict, rng: random.Random):
        self.spec, self.rng = spec, rng

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.spec["components"]["schemas"][name]
        return schema

    def nasty(self):
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(NASTY)
        if r < 0.7:
            return self.rng.choice(INTS)
        return self.rng.choice([None, True, 1.5, float("inf"), [], {}, [[[[]]]] * 3,
                                {"$ref": "x"}, ["\x00"], {"\ud800": 1}])

    def value(self, schema: dict | None, depth: int = 0):
        if schema is None or depth > 6 or self.rng.random() < 0.12:
            return self.nasty()
        schema = self.resolve(schema)
        for combo in ("anyOf", "oneOf", "allOf"):
            if combo in schema:
                return self.value(self.rng.choice(schema[combo]), depth + 1)
        if "enum" in schema and self.rng.random() < 0.8:
            return self.rng.choice(schema["enum"])
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            out = {}
            for name, sub in schema.get("properties", {}).items():
                if name in schema.get("required", []) or self.rng.random() < 0.6:
                    out[name] = self.value(sub, depth + 1)
            if self.rng.random() < 0.1:
                out[self.rng.choice(NASTY) or "extra"] = self.nasty()
            return out
        if kind == "array":
            n = self.rng.choice([0, 1, 2, 3, 40])
            return [self.value(schema.get("items"), depth + 1) for _ in range(n)]
        if kind == "integer":
            bounds = [schema.get(k) for k in ("minimum", "maximum") if k in schema]
            pool = INTS + bounds + [b + d for b in bounds for d in (-1, 1)]
            return self.rng.choice(pool)
        if kind == "number":
            return self.rng.choice([0.0, 0.3, 1.0, 1.5, -0.1, 1e308, 2048, 0.5])
        if kind == "boolean":
            return self.rng.choice([True, False])
        if kind == "string":
            if schema.get("format") == "date":
                return self.rng.choice(["2026-11-26", "2026-02-30", "0000-01-01", "9999-12-31"])
            if schema.get("format") == "date-time":
                return self.rng.choice(["2026-11-26T00:00:00Z", "2026-13-01T00:00:00Z"])
            return self.rng.choice(NASTY + ["text", "The vault code is 4711."])
        return self.nasty()


def encode(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def header_safe(value) -> bytes:
    text = value if isinstance(value, str) else json.dumps(value)
    raw = text.encode("utf-8", "surrogatepass")
    return bytes(b for b in raw if b > 0x20 and b != 0x7F)[:300] or b"k"  # h11: no spaces at ends


def cases_for(spec: dict, path: str, method: str, op: dict, keys: dict, gen: Generator,
              n: int) -> list[Case]:
    rng = gen.rng
    out = []
    admin = path.startswith("/v1/admin")
    for _ in range(n):
        r = rng.random()
        key = (None if r < 0.04 else "namm_bogus" if r < 0.08 else
               keys["admin"] if admin or r < 0.3 else keys["user"])
        headers = {"X-API-Key": key} if key else {}
        filled, query = path, []
        for param in op.get("parameters", []):
            param = gen.resolve(param)
            value = gen.value(param.get("schema"))
            if param["in"] == "path":
                filled = filled.replace("{" + param["name"] + "}", encode(value) or "x")
            elif param["in"] == "query" and (param.get("required") or rng.random() < 0.6):
                query.append(f"{param['name']}={encode(value)}")
            elif param["in"] == "header" and rng.random() < 0.5:
                headers[param["name"]] = header_safe(value)
        case = Case(method.upper(), filled, "&".join(query), headers)
        content = op.get("requestBody", {}).get("content", {})
        if "multipart/form-data" in content and rng.random() < 0.3:
            form = gen.value(content["multipart/form-data"]["schema"])
            form = form if isinstance(form, dict) else {}
            raw = form.pop("file", None) if isinstance(form, dict) else None
            case.files = {"file": ("doc.bin", (raw if isinstance(raw, str) else json.dumps(raw))
                                   .encode("utf-8", "surrogatepass") if rng.random() < 0.5 else
                                   rng.choice(PDFS + [os.urandom(64)]),
                                   rng.choice(["text/plain", "application/pdf", "text/html",
                                               "application/octet-stream", "image/png"]))}
            case.data = {k: v if isinstance(v, str) else json.dumps(v)
                         for k, v in form.items()}
            case.data = {k: v.encode("utf-8", "surrogatepass") for k, v in case.data.items()}
        elif "application/json" in content:
            r = rng.random()
            if r < 0.08:
                case.body = rng.choice([b"", b"{", b"[1,2]", b"\xff\xfe\x00", b"null",
                                        b'{"document": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                        os.urandom(100)])
            else:
                case.body = json.dumps(gen.value(content["application/json"]["schema"]),
                                       ensure_ascii=True).encode()
            case.headers["Content-Type"] = "application/json"
        out.append(case)
    return out


PDFS: list[bytes] = []


def shape_error(spec: dict, op: dict, status: int, response, gen: Generator) -> str | None:
    """Top-level check of a 2xx JSON answer against the documented schema; secrets never."""
    text = response.text
    if any(marker in text for marker in ("key_hash", "password")):
        return "a secret-looking field in the answer"
    documented = op.get("responses", {}).get(str(status))
    if documented is None:
        return f"undocumented status {status}" if status not in (200, 201, 202) else None
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if not schema or "json" not in response.headers.get("content-type", ""):
        return None
    schema = gen.resolve(schema)
    body = response.json()
    if schema.get("type") == "array":
        return None if isinstance(body, list) else "expected a list"
    if schema.get("type") == "object" or "properties" in schema:
        if not isinstance(body, dict):
            return "expected an object"
        missing = [k for k in schema.get("required", []) if k not in body]
        return f"missing {missing}" if missing else None
    return None


def fuzz(url: str, keys: dict, total_cases: int, seed: int = 13,
         threads: int = 8) -> dict[str, Row]:
    import httpx

    from tests.unit.pdf_samples import NESTED_ARRAYS, UNKNOWN_FILTER

    PDFS[:] = [UNKNOWN_FILTER, NESTED_ARRAYS, b"%PDF-1.4 broken"]
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    gen = Generator(spec, random.Random(seed))
    ops = [(path, method, op) for path, item in spec["paths"].items()
           for method, op in item.items() if method in ("get", "post", "put", "patch", "delete")]
    per_op = max(1, total_cases // len(ops))
    work = [(f"{m.upper()} {p}", op, case) for p, m, op in ops
            for case in cases_for(spec, p, m, op, keys, gen, per_op)]
    rows: dict[str, Row] = {}

    def send(item):
        name, op, case = item
        with httpx.Client(base_url=url, timeout=60) as client:
            target = case.path + (f"?{case.query}" if case.query else "")
            try:
                response = client.request(case.method, target, headers=case.headers,
                                          content=case.body, files=case.files, data=case.data)
            except httpx.HTTPError as exc:
                return name, 0, f"transport error {type(exc).__name__}"
        problem = None
        if response.status_code >= 500:
            problem = f"{response.status_code} for {case.method} {target[:120]}"
        elif 200 <= response.status_code < 300:
            problem = shape_error(spec, op, response.status_code, response, gen)
        return name, response.status_code, problem

    with cf.ThreadPoolExecutor(threads) as pool:
        for name, status, problem in pool.map(send, work):
            row = rows.setdefault(name, Row())
            row.cases += 1
            row.statuses[status] += 1
            if problem and len(row.errors) < 5:
                row.errors.append(problem)
            elif problem:
                row.errors.append("...")
    return rows


def start_api(backend: str, tmp: Path, overrides: dict[str, str] | None = None):
    """An API process (no worker) on a fresh database; its keys: user, other tenant, admin.
    `overrides`: more settings (NAMM_... variables) for it."""
    from service.dev.processes import ServiceProcesses, api_command

    # generated git URLs name random hosts: admit none, so nothing is looked up or contacted
    env = dict(os.environ, NAMM_API__LOG_LEVEL="warning", PROMETHEUS_MULTIPROC_DIR=str(tmp / "m"),
               NAMM_ENVIRONMENT="test", NAMM_BATCHES__GIT_ALLOW_PUBLIC_HOSTS="false")
    env.update(overrides or {})
    cleanup = lambda: None  # noqa: E731
    if backend == "pg":
        sys.path.insert(0, str(ROOT / "bench"))
        from load_submit import pg_database

        db_url, cleanup = pg_database()
        env.update(NAMM_DATABASE__URL=db_url, NAMM_BROKER__URL="redis://127.0.0.1:6379/0",
                   NAMM_BROKER__KEY_PREFIX=f"namm-fuzz-{uuid.uuid4().hex[:6]}:")
    else:
        env.update(NAMM_DATABASE__URL=f"sqlite:///{tmp / 'namm.db'}",
                   NAMM_BROKER__URL=f"sqla+sqlite:///{tmp / 'broker.db'}")
    os.environ.update({k: v for k, v in env.items() if k.startswith(("NAMM_", "PROMETHEUS"))})
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core import migrate
    from service.core.db import session_scope
    from service.core.queue import queue_depths
    from service.core.state import reset_process_state

    reset_process_state()
    migrate.upgrade()
    queue_depths()
    with session_scope() as s:
        keys = {"user": issue_key(s, get_or_create_tenant(s, "fuzz-a")).raw_key,
                "other": issue_key(s, get_or_create_tenant(s, "fuzz-b")).raw_key,
                "admin": issue_key(s, get_or_create_tenant(s, "fuzz-ops"), is_admin=True).raw_key}
    port = 8000 + random.Random().randrange(1000, 9000)
    procs = ServiceProcesses(env=env, log_dir=tmp / "logs")
    procs.start("api", api_command(port, api_servers=1))
    procs.wait_healthy(f"http://127.0.0.1:{port}", timeout_s=120)
    return f"http://127.0.0.1:{port}", keys, procs, env, cleanup


def print_table(rows: dict[str, Row]) -> int:
    print("| operation | cases | 2xx | 4xx | 5xx | problems |")
    print("|---|---:|---:|---:|---:|---|")
    total = Counter()
    problems = 0
    for name in sorted(rows):
        row = rows[name]
        by = Counter({k: sum(v for s, v in row.statuses.items() if s // 100 == k)
                      for k in (2, 4, 5)})
        total.update(by)
        total["cases"] += row.cases
        problems += len(row.errors)
        print(f"| {name} | {row.cases} | {by[2]} | {by[4]} | {by[5]} | "
              f"{'; '.join(row.errors[:2]) or '-'} |")
    print(f"| **all {len(rows)} operations** | {total['cases']} | {total[2]} | {total[4]} | "
          f"{total[5]} | {problems} |")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["pg", "sqlite"], default="pg")
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="namm-fuzz-") as tmpdir:
        url, keys, procs, env, cleanup = start_api(args.backend, Path(tmpdir))
        try:
            rows = fuzz(url, keys, args.cases, seed=args.seed)
            procs.check_alive()
            if any(row.errors for row in rows.values()):
                print(procs.log_tail("api", 120), file=sys.stderr)
        finally:
            procs.stop()
            if args.backend == "pg":
                import redis

                client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
                stale = list(client.scan_iter(env["NAMM_BROKER__KEY_PREFIX"] + "*"))
                if stale:
                    client.delete(*stale)
            cleanup()
    print(f"\nfuzzed {sum(r.cases for r in rows.values())} cases, backend {args.backend}, "
          f"seed {args.seed}")
    return 1 if print_table(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
