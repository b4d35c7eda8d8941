"""Schedules: a cron expression in a time zone (parsed by `croniter`) that beat turns into batches.

Rules, all in `start_due_schedules` (called by the beat tick, workers/batches.py):

- a schedule is due when `next_run_at <= now`; `next_run_at` is always the first cron slot
  after the moment it was computed, in the schedule's time zone, stored in UTC;
- after a run starts, the next slot is computed from *now*, not from the slot that was due: a
  service that was down through several slots runs once when it is back, not once per slot;
- one run at a time: while the batch of the previous run has not finished, a due schedule
  waits (it stays due, and starts once when that batch finishes);
- the rows are locked (`FOR UPDATE SKIP LOCKED` on PostgreSQL) so two beats cannot both start
  the same slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from namm.spec import Budget
from service.models import BATCH_FINISHED, Batch, Schedule, utcnow
from service.repos.repository import BatchRepository, NewBatch

CRON_ERRORS = (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError,
               KeyError)


class ScheduleError(ValueError):
    """A cron expression or a time zone that cannot be used; the message is the client's."""


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name such as "
                            "'Europe/Paris' or 'UTC')") from None


def check_cron(expression: str) -> str:
    expression = " ".join(str(expression).split())
    if len(expression.split(" ")) != 5:
        raise ScheduleError(f"cron expression {expression!r} must have 5 fields "
                            "(minute hour day month weekday)")
    try:
        if not croniter.is_valid(expression):
            raise ScheduleError(f"invalid cron expression {expression!r}")
        croniter(expression, datetime(2026, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except CRON_ERRORS:
        raise ScheduleError(f"invalid cron expression {expression!r}") from None
    return expression


def next_run(expression: str, tz: str, after: datetime) -> datetime:
    """The first slot of `expression` strictly after `after`, read in time zone `tz`, in UTC."""
    if after.tzinfo is None:
        after = after.replace(tzinfo=timezone.utc)
    local = after.astimezone(check_timezone(tz))
    slot = croniter(expression, local).get_next(datetime)
    return slot.astimezone(timezone.utc)


def is_due(next_run_at: datetime | None, now: datetime) -> bool:
    if next_run_at is None:
        return False
    if next_run_at.tzinfo is None:  # SQLite gives naive UTC back
        next_run_at = next_run_at.replace(tzinfo=timezone.utc)
    return next_run_at <= now


@dataclass
class ScheduleSpec:
    cron: str
    timezone: str
    source: dict[str, Any]
    tasks: list[str]
    policy: str
    budget: Budget | None
    max_new_tokens: int
    name: str | None = None
    enabled: bool = True
    questions: list[str] = field(default_factory=list)


class ScheduleRepository:
    def __init__(self, session: Session):
        self.session = session

    def create(self, tenant_id: int, spec: ScheduleSpec, now: datetime | None = None) -> Schedule:
        now = now or utcnow()
        row = Schedule(tenant_id=tenant_id, name=spec.name, cron=check_cron(spec.cron),
                       timezone=spec.timezone, source=spec.source, tasks=spec.tasks,
                       questions=list(spec.questions), policy=spec.policy,
                       max_new_tokens=spec.max_new_tokens,
                       enabled=spec.enabled, created_at=now, updated_at=now,
                       next_run_at=next_run(spec.cron, spec.timezone, now) if spec.enabled
                       else None)
        row.budget = spec.budget
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, tenant_id: int, schedule_id: str) -> Schedule | None:
        return self.session.scalar(select(Schedule).where(
            Schedule.id == schedule_id, Schedule.tenant_id == tenant_id))

    def page(self, tenant_id: int, *, offset: int, limit: int) -> tuple[list[Schedule], int]:
        where = Schedule.tenant_id == tenant_id
        total = self.session.scalar(select(func.count()).select_from(Schedule).where(where)) or 0
        rows = self.session.scalars(select(Schedule).where(where)
                                    .order_by(Schedule.created_at.desc(), Schedule.id)
                                    .offset(offset).limit(limit)).all()
        return list(rows), total

    def update(self, row: Schedule, changes: dict[str, Any], now: datetime | None = None) -> Schedule:
        now = now or utcnow()
        for key, value in changes.items():
            if key == "budget":
                row.budget = value
            elif key == "cron":
                row.cron = check_cron(value)
            else:
                setattr(row, key, value)
        if {"cron", "timezone", "enabled"} & set(changes):
            row.next_run_at = next_run(row.cron, row.timezone, now) if row.enabled else None
        row.updated_at = now
        self.session.flush()
        return row

    def delete(self, row: Schedule) -> None:
        self.session.delete(row)
        self.session.flush()

    def due(self, now: datetime) -> list[Schedule]:
        query = (select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
                 .order_by(Schedule.next_run_at).limit(100))
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list(self.session.scalars(query))

    def start_due(self, now: datetime) -> list[str]:
        """New batches for the due schedules whose previous run has finished (ids)."""
        started = []
        for schedule in self.due(now):
            if schedule.running_batch_id:
                status = self.session.scalar(select(Batch.status).where(
                    Batch.id == schedule.running_batch_id))
                if status is not None and status not in BATCH_FINISHED:
                    continue  # one run at a time: stays due until that batch ends
            batch = BatchRepository(self.session).create(NewBatch(
                tenant_id=schedule.tenant_id, source=dict(schedule.source),
                policy=schedule.policy, budget=schedule.budget,
                max_new_tokens=schedule.max_new_tokens, tasks=list(schedule.tasks),
                questions=list(schedule.questions or []), schedule_id=schedule.id))
            schedule.running_batch_id = batch.id
            schedule.last_run_at = now
            # from now, not from the missed slot: missed slots collapse into this one run
            schedule.next_run_at = next_run(schedule.cron, schedule.timezone, now)
            started.append(batch.id)
        self.session.flush()
        return started


def start_due_schedules(now: datetime | None = None) -> list[str]:
    from service.core.db import session_scope

    now = now or utcnow()
    with session_scope() as session:
        return ScheduleRepository(session).start_due(now)
