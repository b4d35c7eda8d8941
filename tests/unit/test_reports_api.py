"""GET /v1/reports/cost on the real app (LitServe + SQLite): totals against hand-computed
figures from known usage records, time zones at a day boundary, a price change inside the
period with half-up rounding, an empty period, CSV, validation (422) and tenant isolation
(an admin key sees every tenant)."""

import csv
import io
from datetime import date

import pytest

from report_seed import BATCH_ID, seed, utc
from tests.sqlite_service import in_process_api, sqlite_service


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with sqlite_service(tmp_path_factory.mktemp("reports")) as tmp:
        yield tmp


@pytest.fixture(scope="module")
def keys(env):
    from service.api.keys import get_or_create_tenant, issue_key
    from service.core.db import session_scope

    with session_scope() as s:
        a, b = get_or_create_tenant(s, "acme"), get_or_create_tenant(s, "globex")
        ops = get_or_create_tenant(s, "operator")
        seed(s, a.id, b.id)
        return {"a": issue_key(s, a).raw_key, "b": issue_key(s, b).raw_key,
                "admin": issue_key(s, ops, is_admin=True).raw_key, "a_id": a.id, "b_id": b.id}


@pytest.fixture(scope="module")
def client(env, keys):
    with in_process_api() as c:
        yield c


def report(client, key, **params):
    r = client.get("/v1/reports/cost", params=params, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


def by_key(rep):
    return {g["key"]: g for g in rep["groups"]}


def test_daily_totals_in_utc(client, keys):
    rep = report(client, keys["a"], **{"from": "2026-03-09", "to": "2026-03-11"})
    days = by_key(rep)
    assert list(days) == ["2026-03-09", "2026-03-10", "2026-03-11"]
    assert days["2026-03-09"]["jobs"] == 1 and days["2026-03-09"]["saved_micro_usd"] == 600
    d10 = days["2026-03-10"]  # r2 (full: 2,500 vs 2,500) and r3 (h2o: a loss of 50)
    assert d10["jobs"] == 2 and d10["cost_micro_usd"] == 3200
    assert d10["full_cache_cost_micro_usd"] == 3150 and d10["saved_micro_usd"] == -50
    assert d10["saved_estimated"] is True and d10["tokens_in"] == 2500
    d11 = days["2026-03-11"]  # the pre-0004 record: cost counted, no saving claimed
    assert d11["cost_micro_usd"] == 300 and d11["jobs_with_counterfactual"] == 0
    assert d11["saved_micro_usd"] == 0 and d11["jobs_without_kv_counts"] == 1
    t = rep["totals"]
    assert t["jobs"] == 4 and t["cost_micro_usd"] == 4500
    assert t["cost_with_counterfactual_micro_usd"] == 4200
    assert t["full_cache_cost_micro_usd"] == 4750 and t["saved_micro_usd"] == 550
    assert t["kv_token_steps"] == 3500 and t["kv_token_steps_full"] == 4200
    assert t["kv_token_steps_saved"] == 700
    assert t["kv_bytes_peak"] == 370 and t["kv_bytes_full_peak"] == 470
    assert t["tokens_in"] == 4500 and t["tokens_out"] == 200
    assert t["seconds"] == 4.0 and t["billed_device_seconds"] == 8.0
    assert t["estimated_jobs"] == 2 and t["saved_estimated"] is True
    # r1's full-cache rerun, apart from the estimates: measured
    shadow = rep["shadow"]
    assert shadow["measured"] and shadow["runs"] == shadow["done"] == 1
    assert shadow["saved_micro_usd"] == 900 and shadow["answers_agree"] == 1
    assert shadow["seconds_run"] == 2.0 and shadow["seconds_full"] == 3.0


def test_day_boundary_follows_the_time_zone(client, keys):
    # r1 (23:30 UTC on the 9th) and r2 (00:30 UTC on the 10th) are both evening of the 9th in
    # New York (UTC-4), and the period's days are New York days
    rep = report(client, keys["a"], **{"from": "2026-03-09", "to": "2026-03-11",
                                       "tz": "America/New_York"})
    days = by_key(rep)
    assert days["2026-03-09"]["jobs"] == 2 and days["2026-03-09"]["cost_micro_usd"] == 3500
    assert days["2026-03-09"]["saved_micro_usd"] == 600
    assert days["2026-03-10"]["jobs"] == 1 and days["2026-03-10"]["saved_micro_usd"] == -50
    assert rep["from"] == "2026-03-09T00:00:00-04:00" and rep["to"] == "2026-03-12T00:00:00-04:00"
    # Tokyo (UTC+9): r1 and r2 fall on the 10th, r3 (21:00 local) too
    tokyo = by_key(report(client, keys["a"], **{"from": "2026-03-10", "to": "2026-03-10",
                                                "tz": "Asia/Tokyo"}))
    assert tokyo["2026-03-10"]["jobs"] == 3


def test_group_by_model_and_policy(client, keys):
    params = {"from": "2026-03-01", "to": "2026-03-31"}
    models = by_key(report(client, keys["a"], group_by="model", **params))
    assert models["m1"]["jobs"] == 3 and models["m1"]["cost_micro_usd"] == 3800
    assert models["m2"]["saved_micro_usd"] == -50
    policies = by_key(report(client, keys["a"], group_by="policy", **params))
    assert policies["full"]["saved_micro_usd"] == 0 and policies["full"]["saved_estimated"] is False
    assert policies["full"]["counterfactual_methods"] == ["self"]
    assert policies["namm"]["jobs"] == 2 and policies["namm"]["saved_micro_usd"] == 600
    batches = by_key(report(client, keys["a"], group_by="batch", **params))
    assert list(batches) == ["(none)", BATCH_ID]
    assert batches["(none)"]["jobs"] == 3 and batches["(none)"]["cost_micro_usd"] == 3800
    assert batches[BATCH_ID]["jobs"] == 1 and batches[BATCH_ID]["saved_micro_usd"] == -50
    # one batch's report (by policy); another tenant's key gets 404 for that id, as for an unknown one
    one = report(client, keys["a"], group_by="policy", batch=BATCH_ID, **params)
    assert [g["key"] for g in one["groups"]] == ["h2o"] and one["batch"] == BATCH_ID
    assert one["totals"]["cost_micro_usd"] == 700 and one["shadow"]["runs"] == 0
    for key, batch in ((keys["b"], BATCH_ID), (keys["a"], "00000000-0000-0000-0000-00000000dead")):
        r = client.get("/v1/reports/cost", params={"batch": batch, **params}, headers={"X-API-Key": key})
        assert r.status_code == 404 and r.json()["detail"] == "batch not found"
    assert report(client, keys["admin"], batch=BATCH_ID, **params)["totals"]["jobs"] == 1


def test_jobs_by_status_per_day(client, keys):
    rep = report(client, keys["a"], with_status="true", **{"from": "2026-03-09", "to": "2026-03-11"})
    status = {row["day"]: row for row in rep["jobs_by_status"]}
    assert status["2026-03-10"] == {"day": "2026-03-10", "done": 2, "failed": 1}
    assert status["2026-03-11"] == {"day": "2026-03-11", "done": 1, "queued": 1}


def test_empty_period_is_valid_and_empty(client, keys):
    rep = report(client, keys["a"], group_by="model", **{"from": "2025-01-01", "to": "2025-01-02"})
    assert rep["groups"] == [] and rep["totals"]["jobs"] == 0
    assert rep["totals"]["cost_micro_usd"] == 0 and rep["totals"]["saved_micro_usd"] == 0
    days = report(client, keys["a"], **{"from": "2025-01-01", "to": "2025-01-02"})["groups"]
    assert [d["key"] for d in days] == ["2025-01-01", "2025-01-02"]
    assert all(d["jobs"] == 0 for d in days)


def test_csv(client, keys):
    r = client.get("/v1/reports/cost", params={"from": "2026-03-01", "to": "2026-03-31",
                                               "group_by": "policy", "format": "csv"},
                   headers={"X-API-Key": keys["a"]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["policy"] for row in rows] == ["full", "h2o", "namm", "total"]
    assert rows[-1]["cost_micro_usd"] == "4500" and rows[-1]["saved_micro_usd"] == "550"
    assert rows[1]["saved_micro_usd"] == "-50" and rows[1]["saved_estimated"] == "True"


def test_tenants_see_only_their_own_figures_and_admin_sees_all(client, keys):
    period = {"from": "2026-03-01", "to": "2026-03-31"}
    b = report(client, keys["b"], **period)["totals"]
    assert b["jobs"] == 1 and b["cost_micro_usd"] == 99_999
    assert report(client, keys["b"], **period)["shadow"]["runs"] == 0  # acme's rerun
    assert report(client, keys["a"], **period)["totals"]["cost_micro_usd"] == 4500
    for params in ({"group_by": "tenant"}, {"tenant": keys["b_id"]}):
        r = client.get("/v1/reports/cost", params={**period, **params},
                       headers={"X-API-Key": keys["a"]})
        assert r.status_code == 403 and "admin" in r.json()["detail"]
    tenants = by_key(report(client, keys["admin"], group_by="tenant", **period))
    assert tenants["acme"]["cost_micro_usd"] == 4500 and tenants["globex"]["jobs"] == 1
    assert "operator" not in tenants
    one = report(client, keys["admin"], tenant=keys["a_id"], **period)
    assert one["totals"]["cost_micro_usd"] == 4500 and one["scope"] == "tenant"
    assert client.get("/v1/reports/cost").status_code == 401


@pytest.mark.parametrize("params, words", [
    ({"tz": "Mars/Olympus"}, "time zone"),
    ({"from": "2026-13-01"}, "not a date"),
    ({"from": "yesterday"}, "not a date"),
    ({"from": "2026-03-10", "to": "2026-03-09"}, "before"),
    ({"from": "2024-01-01", "to": "2026-01-01"}, "366"),
    ({"group_by": "week"}, "group_by"),
    ({"format": "xml"}, "format"),
    ({"from": "x" * 41}, "from"),
])
def test_bad_parameters_are_422_with_a_message(client, keys, params, words):
    r = client.get("/v1/reports/cost", params=params, headers={"X-API-Key": keys["a"]})
    assert r.status_code == 422, r.text
    assert words in str(r.json()["detail"])


@pytest.mark.parametrize("params", [
    {"from": "9999-12-30", "to": "9999-12-31"},  # the "+1 day" of `to` overflowed: a 500
    {"from": "0001-01-01", "to": "0001-01-02"},
    {"from": "10000-01-01", "to": "10000-01-02"},
    {"from": "9999-12-31T23:00:00", "to": "9999-12-31T23:59:59"},
    {"from": "0001-01-01T00:00:00+14:00", "to": "0001-01-01T10:00:00+14:00"},
    {"from": "9999-12-30", "to": "9999-12-31", "tz": "Pacific/Kiritimati"},
    {"from": "0001-01-01", "to": "0001-01-02", "tz": "Pacific/Kiritimati"},
    {"from": "9999-12-31", "to": "0001-01-01"},
    {"from": "0001-01-01", "to": "9999-12-31"},
])
def test_dates_out_of_range_are_422_and_the_connection_goes_on(client, keys, params):
    r = client.get("/v1/reports/cost", params=params, headers={"X-API-Key": keys["a"]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].split(":")[0] in ("from", "to")  # names the parameter
    assert report(client, keys["a"], **{"from": "2026-03-09", "to": "2026-03-10"})["groups"]


def test_the_edges_of_the_range_are_served(client, keys):
    assert len(report(client, keys["a"], **{"from": "1970-01-01", "to": "1970-01-02"})["groups"]) == 2
    assert len(report(client, keys["a"], **{"from": "8999-12-30", "to": "8999-12-31",
                                          "tz": "Pacific/Kiritimati"})["groups"]) == 2


def test_price_change_inside_the_period_and_half_up_rounding(client, keys, tmp_path):
    """Two jobs with the same work either side of a price change keep the price of their day;
    each job is rounded once (2.5 micro-USD -> 3), and the report sums the rounded figures."""
    import json

    from service.core.db import session_scope
    from service.core.settings import PricesSettings, PriceVersion
    from service.jobs.usage import usage_record
    from report_seed import add_job

    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"rates": [{
        "model": "priced", "device": "cpu", "seconds_per_token": 0.001,
        "seconds_per_kv_token_step": 1e-6, "policy_seconds_per_entry": {"namm": 1e-4}}]}))
    prices = PricesSettings(device_hour_micro_usd=3_600_000, rates_path=str(rates), versions=[
        PriceVersion(id="2026-04-02", effective_from=date(2026, 4, 2),
                     device_hour_micro_usd=7_200_000, input_per_1k_tokens_micro_usd=200,
                     output_per_1k_tokens_micro_usd=600)])
    output = {"tokens_in": 10_000, "tokens_out": 1_000, "kv_kept_fraction": 0.4,
              "kv_bytes_peak": 4, "kv_bytes_full_peak": 10, "seconds": 999.0,
              "kv_token_steps": 20_000_000, "kv_token_steps_full": 50_000_000,
              "kv_updates": [[512, 10_000, 100]], "device": "cpu"}
    # 25 tokens in, no rate for this model: 2.5 micro-USD of tokens, no device seconds
    small = {"tokens_in": 25, "tokens_out": 0, "kv_kept_fraction": 1.0, "kv_bytes_peak": 1,
             "kv_bytes_full_peak": 1, "seconds": 0.0, "device": "cpu"}
    with session_scope() as s:
        for when in (utc(2026, 4, 1, 23, 0), utc(2026, 4, 2, 1, 0)):
            job = add_job(s, keys["a_id"], when)
            s.add(usage_record(job_id=job.id, tenant_id=keys["a_id"], model="priced",
                               policy="namm", budget=None, output=output, prices=prices,
                               finished_at=when))
            job = add_job(s, keys["a_id"], when)
            s.add(usage_record(job_id=job.id, tenant_id=keys["a_id"], model="unpriced",
                               policy="namm", budget=None, output=small, prices=prices,
                               finished_at=when))
    days = by_key(report(client, keys["a"], group_by="day",
                         **{"from": "2026-04-01", "to": "2026-04-02"}))
    # April 1st: tokens 1,300 + 32 s x 1,000 = 33,300; full 1,300 + 61 s x 1,000 = 62,300;
    # the small job 2.5 -> 3. April 2nd: tokens 2,600 + 32 s x 2,000; full 2,600 + 122,000;
    # the small job 5.0 -> 5.
    assert days["2026-04-01"]["cost_micro_usd"] == 33_300 + 3
    assert days["2026-04-01"]["full_cache_cost_micro_usd"] == 62_300
    assert days["2026-04-01"]["saved_micro_usd"] == 29_000
    assert days["2026-04-02"]["cost_micro_usd"] == 66_600 + 5
    assert days["2026-04-02"]["saved_micro_usd"] == 58_000
    assert days["2026-04-02"]["jobs_with_counterfactual"] == 1
