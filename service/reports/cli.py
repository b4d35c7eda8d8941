"""`python -m service.reports`: the cost report as a table in the terminal, or as CSV/JSON.

It reads the database of the configured settings (NAMM_DATABASE__URL) directly, as an operator
tool: every tenant unless --tenant names one. The figures are the API's (service/reports/cost.py).

    python -m service.reports --from 2026-03-01 --to 2026-03-31 --group-by policy
    python -m service.reports --group-by day --tz Europe/Paris --tenant acme --csv march.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from service.reports.cost import GROUPS, ReportError, build_report, parse_query, report_csv

COLUMNS = (  # header, field, format
    ("jobs", "jobs", "{:,}"),
    ("tokens in", "tokens_in", "{:,}"),
    ("tokens out", "tokens_out", "{:,}"),
    ("KV steps kept", "kv_token_steps", "{:,.0f}"),
    ("KV steps full", "kv_token_steps_full", "{:,.0f}"),
    ("device s", "billed_device_seconds", "{:,.1f}"),
    ("cost USD", "cost_micro_usd", "usd"),
    ("full cache USD", "full_cache_cost_micro_usd", "usd"),
    ("saved USD", "saved_micro_usd", "usd"),
)


def usd(micro: int) -> str:
    return f"{micro / 1_000_000:,.6f}"


def _cell(row: dict[str, Any], field: str, fmt: str) -> str:
    if field in ("full_cache_cost_micro_usd", "saved_micro_usd") and not row["jobs_with_counterfactual"]:
        return "-"
    text = usd(row[field]) if fmt == "usd" else fmt.format(row[field])
    if field == "saved_micro_usd" and row["saved_estimated"]:
        text += " est."
    return text


def format_table(report: dict[str, Any]) -> str:
    """Plain aligned columns; a saving marked 'est.' is an estimate, a negative one a loss."""
    header = [report["group_by"], *(h for h, _, _ in COLUMNS)]
    rows = [[g["key"], *(_cell(g, f, fmt) for _, f, fmt in COLUMNS)] for g in report["groups"]]
    rows.append(["total", *(_cell(report["totals"], f, fmt) for _, f, fmt in COLUMNS)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    out = [f"cost report {report['from']} .. {report['to']} ({report['tz']}), "
           f"{report['scope']}, by {report['group_by']}", line(header),
           "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[:-1]] + (["  ".join("-" * w for w in widths)] if rows[:-1] else [])
    out.append(line(rows[-1]))
    totals = report["totals"]
    if totals["estimated_jobs"]:
        out.append(f"est.: the full-cache cost of {totals['estimated_jobs']} job(s) is estimated "
                   f"({', '.join(m for m in totals['counterfactual_methods'] if m != 'self')}); "
                   "a negative saving is a loss")
    if totals.get("questions_from_memories"):
        out.append(f"stored documents: {totals['questions_from_memories']} question(s) answered from "
                   f"kept memories, {totals['tokens_not_reread']:,} document tokens not read again, "
                   f"{usd(totals['reuse_saved_micro_usd'])} USD saved by not re-reading (apart from "
                   "the eviction saving above)")
    shadow = report.get("shadow") or {}
    if shadow.get("done"):
        out.append(f"measured on {shadow['done']} full-cache rerun(s): saved "
                   f"{usd(shadow['saved_micro_usd'])} USD, {shadow['answers_agree']} with the "
                   f"same answer, {shadow['seconds_run']:.1f} s vs {shadow['seconds_full']:.1f} s "
                   "with the full cache")
    if totals["jobs"] > totals["jobs_with_counterfactual"]:
        out.append(f"{totals['jobs'] - totals['jobs_with_counterfactual']} job(s) have no "
                   "full-cache figure and count in cost only")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.reports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_", default=None, help="YYYY-MM-DD or ISO datetime")
    parser.add_argument("--to", default=None, help="YYYY-MM-DD (included) or ISO datetime")
    parser.add_argument("--group-by", default="day", choices=GROUPS)
    parser.add_argument("--tz", default="UTC", help="IANA time zone for days")
    parser.add_argument("--tenant", default=None, help="tenant name (default: every tenant)")
    parser.add_argument("--csv", default=None, metavar="PATH", help="also write CSV ('-': stdout only)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)

    from service.core.db import session_scope
    from service.core.db_check import readable_database_problem
    from service.core.settings import get_settings
    from service.models import Tenant

    # a read command must never create a database: check the configured one is there first
    problem = readable_database_problem(get_settings().database.url.get_secret_value())
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with session_scope() as session:
        tenant_id = None
        if args.tenant is not None:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == args.tenant))
            if tenant_id is None:
                print(f"error: no tenant named {args.tenant!r}", file=sys.stderr)
                return 2
        try:
            query = parse_query(from_=args.from_, to=args.to, group_by=args.group_by, tz=args.tz,
                                tenant_id=tenant_id)
        except ReportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report = build_report(session, query)
    if args.csv == "-":
        sys.stdout.write(report_csv(report))
        return 0
    if args.csv:
        Path(args.csv).write_text(report_csv(report), encoding="utf-8")
    print(json.dumps(report, indent=1) if args.json else format_table(report))
    if args.csv:
        print(f"CSV written to {args.csv}", file=sys.stderr)
    return 0
