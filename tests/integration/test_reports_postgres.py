"""The cost report on the real PostgreSQL (timestamptz, JSONB, booleans): the same known
records give the same hand-computed figures as on SQLite (tests/unit/test_reports_api.py)."""

import pytest
from test_migrations_postgres import fresh_pg  # noqa: F401 (the fixture: an empty database)

from report_seed import BATCH_ID, seed
from service.core.state import reset_process_state

pytestmark = pytest.mark.services


def test_report_figures_on_postgres(fresh_pg, monkeypatch):  # noqa: F811
    monkeypatch.setenv("NAMM_DATABASE__URL", fresh_pg)
    reset_process_state()
    try:
        from service.api.keys import get_or_create_tenant
        from service.core import migrate
        from service.core.db import session_scope
        from service.reports.cost import build_report, parse_query

        migrate.upgrade(fresh_pg)
        with session_scope() as s:
            a, b = get_or_create_tenant(s, "acme"), get_or_create_tenant(s, "globex")
            seed(s, a.id, b.id)
            a_id = a.id
        with session_scope() as s:
            ny = build_report(s, parse_query(from_="2026-03-09", to="2026-03-11", group_by="day",
                                             tz="America/New_York", tenant_id=a_id),
                              with_status=True)
            batches = build_report(s, parse_query(from_="2026-03-01", to="2026-03-31",
                                                  group_by="batch", tz="UTC", tenant_id=a_id))
            everyone = build_report(s, parse_query(from_="2026-03-01", to="2026-03-31",
                                                   group_by="tenant", tz="UTC", tenant_id=None))
        days = {g["key"]: g for g in ny["groups"]}
        assert days["2026-03-09"]["jobs"] == 2 and days["2026-03-09"]["saved_micro_usd"] == 600
        assert days["2026-03-10"]["saved_micro_usd"] == -50
        assert ny["totals"]["cost_micro_usd"] == 4500 and ny["totals"]["kv_token_steps"] == 3500
        assert ny["shadow"]["saved_micro_usd"] == 900
        assert {g["key"]: g["jobs"] for g in batches["groups"]} == {"(none)": 3, BATCH_ID: 1}
        assert {g["key"]: g["cost_micro_usd"] for g in everyone["groups"]} == {
            "acme": 4500, "globex": 99_999}
    finally:
        reset_process_state()


def test_dates_at_and_past_the_range_on_postgres(fresh_pg, monkeypatch):  # noqa: F811
    """The edges of the period's range are queried on timestamptz; past them is a ReportError
    (the route's 422) before any SQL, and the session stays usable."""
    monkeypatch.setenv("NAMM_DATABASE__URL", fresh_pg)
    reset_process_state()
    try:
        from service.core import migrate
        from service.core.db import session_scope
        from service.reports.cost import ReportError, build_report, parse_query

        migrate.upgrade(fresh_pg)
        with session_scope() as s:
            for from_, to in (("9999-12-30", "9999-12-31"), ("0001-01-01", "0001-01-02")):
                with pytest.raises(ReportError, match="out of range"):
                    parse_query(from_=from_, to=to, group_by="day", tz="Pacific/Kiritimati",
                                tenant_id=None)
            for from_, to in (("1970-01-01", "1970-01-02"), ("8999-12-30", "8999-12-31")):
                rep = build_report(s, parse_query(from_=from_, to=to, group_by="day",
                                                  tz="Pacific/Kiritimati", tenant_id=None),
                                   with_status=True)
                assert len(rep["groups"]) == 2 and rep["totals"]["jobs"] == 0
    finally:
        reset_process_state()
