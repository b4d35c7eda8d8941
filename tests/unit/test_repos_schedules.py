"""Schedule due-times on fixed clocks: cron slots read in the schedule's time zone (summer and
winter time), a service down through several slots runs once when back (not once per slot),
one run at a time per schedule, disabled schedules never run; invalid cron or zone refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from service.core.db import session_scope
from service.models import Batch
from service.repos.repository import BatchRepository
from service.repos.schedules import (
    ScheduleError,
    ScheduleRepository,
    ScheduleSpec,
    check_cron,
    check_timezone,
    is_due,
    next_run,
)

UTC = timezone.utc


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_next_run_in_the_schedule_time_zone():
    # 02:00 in Paris is 00:00 UTC in summer (CEST) and 01:00 UTC in winter (CET)
    assert next_run("0 2 * * *", "Europe/Paris", at(2026, 6, 10, 12)) == at(2026, 6, 11, 0)
    assert next_run("0 2 * * *", "Europe/Paris", at(2026, 1, 10, 12)) == at(2026, 1, 11, 1)
    assert next_run("0 2 * * *", "UTC", at(2026, 1, 10, 1, 59)) == at(2026, 1, 10, 2)
    # strictly after: at the slot itself, the next one
    assert next_run("0 2 * * *", "UTC", at(2026, 1, 10, 2)) == at(2026, 1, 11, 2)
    assert next_run("0 9 * * 1", "America/New_York", at(2026, 11, 26, 12)) == at(2026, 11, 30, 14)
    # naive datetimes are UTC (SQLite gives them back so)
    assert next_run("*/15 * * * *", "UTC", datetime(2026, 1, 1, 0, 7)) == at(2026, 1, 1, 0, 15)


def test_is_due():
    assert is_due(at(2026, 1, 1, 2), at(2026, 1, 1, 2))
    assert is_due(datetime(2026, 1, 1, 2), at(2026, 1, 1, 3))
    assert not is_due(at(2026, 1, 1, 2), at(2026, 1, 1, 1, 59))
    assert not is_due(None, at(2030, 1, 1))


@pytest.mark.parametrize("bad", ["every night", "61 * * * *", "0 2 * *", "0 2 * * * *", "* * 32 * *"])
def test_bad_cron_is_refused(bad):
    with pytest.raises(ScheduleError):
        check_cron(bad)


def test_bad_time_zone_is_refused():
    with pytest.raises(ScheduleError, match="time zone"):
        check_timezone("Mars/Olympus")
    with pytest.raises(ScheduleError):
        check_timezone("../../etc/passwd")


@pytest.fixture
def tenant(tmp_path, monkeypatch):
    from service.api.keys import get_or_create_tenant
    from service.core.migrate import upgrade
    from service.core.state import reset_process_state

    url = f"sqlite:///{tmp_path / 's.db'}"
    monkeypatch.setenv("NAMM_DATABASE__URL", url)
    reset_process_state()
    upgrade(url)
    with session_scope() as s:
        yield_id = get_or_create_tenant(s, "t").id
    yield yield_id
    reset_process_state()


def make(tenant: int, now: datetime, enabled: bool = True) -> str:
    with session_scope() as s:
        return ScheduleRepository(s).create(tenant, ScheduleSpec(
            cron="0 2 * * *", timezone="UTC", source={"kind": "path", "path": "/srv/r"},
            tasks=["summaries"], policy="surprisal", budget=None, max_new_tokens=8,
            enabled=enabled), now=now).id


def tick(now: datetime) -> list[str]:
    with session_scope() as s:
        return ScheduleRepository(s).start_due(now)


def test_missed_slots_run_once_and_one_run_at_a_time(tenant):
    t0 = at(2026, 1, 1, 12)
    schedule_id = make(tenant, t0)
    make(tenant, t0, enabled=False)
    assert tick(at(2026, 1, 2, 1, 59)) == []  # not yet
    # the service was down from Jan 2 to Jan 5: three slots missed, one run now
    back = at(2026, 1, 5, 9, 30)
    started = tick(back)
    assert len(started) == 1
    assert tick(back + timedelta(minutes=1)) == []
    with session_scope() as s:
        row = ScheduleRepository(s).get(tenant, schedule_id)
        assert row.running_batch_id == started[0]
        assert row.next_run_at.replace(tzinfo=UTC) == at(2026, 1, 6, 2)
        assert row.last_run_at.replace(tzinfo=UTC) == back
        batch = s.get(Batch, started[0])
        assert (batch.schedule_id, batch.status, batch.tasks) == (schedule_id, "queued",
                                                                  ["summaries"])
    # the next slot comes while that batch still runs: it waits, and stays due
    assert tick(at(2026, 1, 6, 2, 0)) == []
    assert tick(at(2026, 1, 6, 3, 0)) == []
    with session_scope() as s:
        BatchRepository(s).cancel(tenant, started[0])  # the previous run ends
    again = tick(at(2026, 1, 6, 4, 0))
    assert len(again) == 1 and again != started
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 2
        row = ScheduleRepository(s).get(tenant, schedule_id)
        assert row.next_run_at.replace(tzinfo=UTC) == at(2026, 1, 7, 2)
