"""Cost-reduction roll-ups of usage records: one query, validated and bounded, grouped by day
(in a time zone), model, policy, batch or tenant, with totals.

Every sum is over integers or exact counts, so a report adds up to the same figures as the
jobs it covers. Savings are only summed over jobs that have a counterfactual (a named method);
`saved_estimated` says whether any of them is an estimate, and a negative saving is a loss.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Job, Tenant, UsageRecord
from service.jobs.shadow import shadow_summary

GroupBy = Literal["day", "model", "policy", "batch", "tenant"]
GROUPS: tuple[str, ...] = ("day", "model", "policy", "batch", "tenant")
MAX_DAYS = 366
DEFAULT_DAYS = 30
# bounds of a report's period in UTC: far inside what Python's datetime and both databases can
# hold, so a time zone or the "+1 day" of an inclusive `to` can never overflow (a 500 before)
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)
NO_BATCH = "(none)"


class ReportError(ValueError):
    """A bad report query: the message is for the client (422)."""


@dataclass(frozen=True)
class ReportQuery:
    start: datetime  # aware, inclusive
    end: datetime  # aware, exclusive
    group_by: str
    tz: ZoneInfo
    tenant_id: int | None  # None: every tenant (admin keys only)
    batch_id: str | None = None  # one repository batch's jobs only


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(f"tz: unknown time zone {name!r} (an IANA name, e.g. Europe/Paris)") from None


def _bound(raw: str | None, tz: ZoneInfo, name: str, *, end: bool) -> datetime | None:
    """'YYYY-MM-DD' is a whole day in `tz` (`to` includes it); an ISO datetime is an instant
    (without an offset it is read in `tz`)."""
    if raw is None or raw == "":
        return None
    if len(raw) > 40:
        raise ReportError(f"{name}: too long")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        day = None
    try:
        if day is not None:
            return _representable(
                datetime.combine(day + timedelta(days=1) if end else day, time(0), tzinfo=tz), name)
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise ReportError(f"{name}: {raw!r} is not a date (YYYY-MM-DD) or an ISO datetime") from None
        return _representable(when if when.tzinfo else when.replace(tzinfo=tz), name)
    except OverflowError:
        raise ReportError(_out_of_range(name)) from None


def _out_of_range(name: str) -> str:
    return f"{name}: out of range (between {EARLIEST.date()} and {LATEST.date()} UTC)"


def _representable(when: datetime, name: str) -> datetime:
    """`when` if it lies in [EARLIEST, LATEST] once in UTC; OverflowError is caught by callers."""
    if not EARLIEST <= when.astimezone(timezone.utc) <= LATEST:
        raise ReportError(_out_of_range(name))
    return when


def parse_query(*, from_: str | None, to: str | None, group_by: str, tz: str | None,
                tenant_id: int | None, batch_id: str | None = None,
                now: datetime | None = None) -> ReportQuery:
    zone = _zone(tz)
    if group_by not in GROUPS:
        raise ReportError(f"group_by: must be one of {', '.join(GROUPS)}")
    now = now or datetime.now(timezone.utc)
    end = _bound(to, zone, "to", end=True)
    start = _bound(from_, zone, "from", end=False)
    if end is None:
        end = datetime.combine(now.astimezone(zone).date() + timedelta(days=1), time(0), tzinfo=zone)
    if start is None:
        start = end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise ReportError("from: must be before to")
    if end - start > timedelta(days=MAX_DAYS):
        raise ReportError(f"the period is longer than {MAX_DAYS} days; ask for several reports")
    if batch_id is not None and not 0 < len(batch_id) <= 36:
        raise ReportError("batch: a batch id (36 characters at most)")
    return ReportQuery(start=start, end=end, group_by=group_by, tz=zone, tenant_id=tenant_id,
                       batch_id=batch_id)


@dataclass
class Totals:
    jobs: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    kv_token_steps: float = 0.0
    kv_token_steps_full: float = 0.0
    kv_bytes_peak: int = 0
    kv_bytes_full_peak: int = 0
    seconds: float = 0.0
    seconds_prefill: float = 0.0
    seconds_decode: float = 0.0
    seconds_policy: float = 0.0
    billed_device_seconds: float = 0.0
    cost_micro_usd: int = 0
    # over the jobs that have a counterfactual only (named method; see pricing.py)
    jobs_with_counterfactual: int = 0
    cost_with_counterfactual_micro_usd: int = 0
    full_cache_cost_micro_usd: int = 0
    estimated_jobs: int = 0
    jobs_without_kv_counts: int = 0  # records from before revision 0004
    methods: set[str] = field(default_factory=set)
    # the reuse view (stored documents, service/memories): questions answered from a kept
    # memory, the document tokens they did not read again, and what re-reading them with the
    # full cache would have cost: a saving apart from the eviction saving above
    questions_from_memories: int = 0
    tokens_not_reread: int = 0
    reuse_saved_micro_usd: int = 0

    def add(self, u: dict[str, Any]) -> None:
        self.jobs += 1
        self.tokens_in += u["tokens_in"]
        self.tokens_out += u["tokens_out"]
        if u["kv_token_steps"] is None or u["kv_token_steps_full"] is None:
            self.jobs_without_kv_counts += 1
        else:
            self.kv_token_steps += u["kv_token_steps"]
            self.kv_token_steps_full += u["kv_token_steps_full"]
        self.kv_bytes_peak += u["kv_bytes_peak"]
        self.kv_bytes_full_peak += u["kv_bytes_full_peak"]
        for name in ("seconds", "seconds_prefill", "seconds_decode", "seconds_policy"):
            setattr(self, name, getattr(self, name) + (u[name] or 0.0))
        self.billed_device_seconds += u["billed_device_seconds"] or 0.0
        self.cost_micro_usd += u["cost_micro_usd"]
        if u["full_cache_cost_micro_usd"] is not None:
            self.jobs_with_counterfactual += 1
            self.cost_with_counterfactual_micro_usd += u["cost_micro_usd"]
            self.full_cache_cost_micro_usd += u["full_cache_cost_micro_usd"]
            self.estimated_jobs += bool(u["counterfactual_estimated"])
            self.methods.add(u["counterfactual_method"] or "")
        if u["tokens_not_reread"] is not None:
            self.questions_from_memories += 1
            self.tokens_not_reread += u["tokens_not_reread"]
            self.reuse_saved_micro_usd += u["reread_cost_micro_usd"] or 0

    def as_dict(self) -> dict[str, Any]:
        saved = self.full_cache_cost_micro_usd - self.cost_with_counterfactual_micro_usd
        return {
            "jobs": self.jobs, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "kv_token_steps": self.kv_token_steps, "kv_token_steps_full": self.kv_token_steps_full,
            "kv_token_steps_saved": self.kv_token_steps_full - self.kv_token_steps,
            "kv_bytes_peak": self.kv_bytes_peak, "kv_bytes_full_peak": self.kv_bytes_full_peak,
            "kv_bytes_saved": self.kv_bytes_full_peak - self.kv_bytes_peak,
            "seconds": round(self.seconds, 6), "seconds_prefill": round(self.seconds_prefill, 6),
            "seconds_decode": round(self.seconds_decode, 6),
            "seconds_policy": round(self.seconds_policy, 6),
            "billed_device_seconds": round(self.billed_device_seconds, 6),
            "cost_micro_usd": self.cost_micro_usd,
            "jobs_with_counterfactual": self.jobs_with_counterfactual,
            "cost_with_counterfactual_micro_usd": self.cost_with_counterfactual_micro_usd,
            "full_cache_cost_micro_usd": self.full_cache_cost_micro_usd,
            "saved_micro_usd": saved,
            "saved_estimated": self.estimated_jobs > 0,
            "estimated_jobs": self.estimated_jobs,
            "jobs_without_kv_counts": self.jobs_without_kv_counts,
            "counterfactual_methods": sorted(self.methods),
            "questions_from_memories": self.questions_from_memories,
            "tokens_not_reread": self.tokens_not_reread,
            "reuse_saved_micro_usd": self.reuse_saved_micro_usd,
        }


USAGE_COLUMNS = ("tokens_in", "tokens_out", "kv_token_steps", "kv_token_steps_full",
                 "kv_bytes_peak", "kv_bytes_full_peak", "seconds", "seconds_prefill",
                 "seconds_decode", "seconds_policy", "billed_device_seconds", "cost_micro_usd",
                 "full_cache_cost_micro_usd", "counterfactual_estimated",
                 "counterfactual_method", "model", "policy", "created_at", "tenant_id",
                 "tokens_not_reread", "reread_cost_micro_usd")


def _as_utc(when: datetime) -> datetime:
    # SQLite hands back naive datetimes: they are stored in UTC
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def usage_rows(session: Session, q: ReportQuery) -> list[dict[str, Any]]:
    cols = [getattr(UsageRecord, c) for c in USAGE_COLUMNS]
    stmt = (select(*cols, Job.batch_id, Tenant.name.label("tenant"))
            .join(Job, Job.id == UsageRecord.job_id)
            .join(Tenant, Tenant.id == UsageRecord.tenant_id)
            .where(UsageRecord.created_at >= q.start.astimezone(timezone.utc),
                   UsageRecord.created_at < q.end.astimezone(timezone.utc)))
    if q.tenant_id is not None:
        stmt = stmt.where(UsageRecord.tenant_id == q.tenant_id)
    if q.batch_id is not None:
        stmt = stmt.where(Job.batch_id == q.batch_id)
    return [dict(row._mapping) for row in session.execute(stmt)]


def group_key(row: dict[str, Any], q: ReportQuery) -> str:
    if q.group_by == "day":
        return _as_utc(row["created_at"]).astimezone(q.tz).date().isoformat()
    if q.group_by == "batch":
        return row["batch_id"] or NO_BATCH
    return str(row[q.group_by])


def _days(q: ReportQuery) -> list[str]:
    first = q.start.astimezone(q.tz).date()
    last = (q.end - timedelta(microseconds=1)).astimezone(q.tz).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def status_by_day(session: Session, q: ReportQuery) -> list[dict[str, Any]]:
    """Jobs created per day of the period (in q.tz) by current status."""
    stmt = (select(Job.created_at, Job.status)
            .where(Job.created_at >= q.start.astimezone(timezone.utc),
                   Job.created_at < q.end.astimezone(timezone.utc)))
    if q.tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == q.tenant_id)
    if q.batch_id is not None:
        stmt = stmt.where(Job.batch_id == q.batch_id)
    counts: dict[str, dict[str, int]] = {day: {} for day in _days(q)}
    for created, status in session.execute(stmt):
        day = _as_utc(created).astimezone(q.tz).date().isoformat()
        bucket = counts.setdefault(day, {})
        bucket[status] = bucket.get(status, 0) + 1
    return [{"day": day, **counts[day]} for day in sorted(counts)]


def build_report(session: Session, q: ReportQuery, *, with_status: bool = False) -> dict[str, Any]:
    groups: dict[str, Totals] = {}
    if q.group_by == "day":  # every day of the period, also the empty ones (charts over time)
        groups = {day: Totals() for day in _days(q)}
    total = Totals()
    for row in usage_rows(session, q):
        groups.setdefault(group_key(row, q), Totals()).add(row)
        total.add(row)
    report: dict[str, Any] = {
        "from": q.start.isoformat(), "to": q.end.isoformat(), "tz": q.tz.key,
        "group_by": q.group_by, "scope": "all tenants" if q.tenant_id is None else "tenant",
        "batch": q.batch_id,
        "groups": [{"key": key, **groups[key].as_dict()} for key in sorted(groups)],
        "totals": total.as_dict(),
    }
    if with_status:
        report["jobs_by_status"] = status_by_day(session, q)
    # full-cache reruns of sampled jobs (service/jobs/shadow.py): measured, shown apart
    report["shadow"] = shadow_summary(session, start=q.start.astimezone(timezone.utc),
                                      end=q.end.astimezone(timezone.utc), tenant_id=q.tenant_id,
                                      batch_id=q.batch_id)
    return report


CSV_FIELDS = ("key", "jobs", "tokens_in", "tokens_out", "kv_token_steps", "kv_token_steps_full",
              "kv_token_steps_saved", "kv_bytes_peak", "kv_bytes_full_peak", "kv_bytes_saved",
              "seconds", "billed_device_seconds", "cost_micro_usd", "jobs_with_counterfactual",
              "full_cache_cost_micro_usd", "saved_micro_usd", "saved_estimated")


def report_csv(report: dict[str, Any]) -> str:
    """One row per group and a last row keyed 'total'."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=(report["group_by"], *CSV_FIELDS[1:]),
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in [*report["groups"], {"key": "total", **report["totals"]}]:
        writer.writerow({report["group_by"]: row["key"], **row})
    return out.getvalue()

