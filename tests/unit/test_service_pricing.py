"""Billing by work done, in integer micro-dollars, against hand-computed figures: the price
version in force, the measured rate, the named counterfactual, losses, rounding; the API's
field types validate through namm.spec."""

from datetime import date, datetime, timezone

import pytest
from pydantic import BaseModel, ValidationError

from namm.spec import Budget
from service.core.contract import BudgetField, PolicyField
from service.core.settings import PricesSettings, PriceVersion
from service.jobs.pricing import DeviceRate, Work, job_cost, load_rates, price_at

# 1,000 micro-USD per device-second until June 2026, then 2,000 and dearer tokens
PRICES = PricesSettings(
    input_per_1k_tokens_micro_usd=100, output_per_1k_tokens_micro_usd=300,
    device_hour_micro_usd=3_600_000,
    versions=[PriceVersion(id="2026-06", effective_from=date(2026, 6, 1),
                           device_hour_micro_usd=7_200_000, input_per_1k_tokens_micro_usd=200,
                           output_per_1k_tokens_micro_usd=600)])
RATES = (DeviceRate(model="m", device="cpu", seconds_per_token=0.001,
                    seconds_per_kv_token_step=1e-6, policy_seconds_per_entry={"namm": 1e-4}),)
WORK = Work(tokens_in=10_000, tokens_out=1_000, kv_token_steps=20_000_000,
            kv_token_steps_full=50_000_000, entries_scored=10_000, seconds_prefill=300.0,
            seconds_decode=200.0, seconds_policy=100.0)
MAY = datetime(2026, 5, 31, 23, 59, tzinfo=timezone.utc)
JUNE = datetime(2026, 6, 1, 0, 0, tzinfo=timezone.utc)


def cost(policy="namm", device="cpu", when=MAY, work=WORK, prices=PRICES):
    return job_cost(prices, policy=policy, model="m", device=device, finished_at=when, work=work,
                    rates=RATES)


def test_billed_by_work_with_an_estimated_full_cache_counterfactual():
    c = cost()
    # tokens 10 x 100 + 1 x 300 = 1,300; device 0.001 x 11,000 + 1e-6 x 2e7 + 1e-4 x 1e4 = 32 s
    assert c.billed_device_seconds == pytest.approx(32.0)
    assert c.cost_micro_usd == 1_300 + 32_000
    # the full cache: the same tokens, 5e7 token-steps, no policy: 11 + 50 = 61 s
    assert c.full_cache_cost_micro_usd == 1_300 + 61_000
    assert c.saved_micro_usd == 29_000
    assert c.counterfactual_method == "kv_token_steps_rate:m:cpu" and c.counterfactual_estimated
    assert c.price_id == "default" and c.device_hour_micro_usd == 3_600_000
    # the wall clock (500 s of prefill + decode on a loaded machine) is not what is billed
    assert isinstance(c.cost_micro_usd, int)


def test_a_price_change_applies_from_its_date():
    c = cost(when=JUNE)
    assert c.price_id == "2026-06" and c.device_hour_micro_usd == 7_200_000
    assert c.cost_micro_usd == 2_600 + 64_000 and c.full_cache_cost_micro_usd == 2_600 + 122_000
    # a version for another device kind does not apply
    gpu_only = PRICES.model_copy(update={"versions": [
        PRICES.versions[0].model_copy(update={"device": "cuda"})]})
    assert price_at(gpu_only, JUNE, "cpu").id == "default"
    assert price_at(gpu_only, JUNE, "cuda:NVIDIA H100").id == "2026-06"


def test_a_policy_dearer_than_what_it_saves_shows_a_loss():
    heavy = Work(**{**WORK.__dict__, "entries_scored": 400_000})  # 40 s of policy
    c = cost(work=heavy)
    assert c.cost_micro_usd == 1_300 + 71_000
    assert c.saved_micro_usd == -10_000


def test_full_policy_is_its_own_counterfactual_with_zero_saving():
    full = Work(**{**WORK.__dict__, "kv_token_steps": 50_000_000, "entries_scored": 0})
    c = cost(policy="full", work=full)
    assert c.cost_micro_usd == c.full_cache_cost_micro_usd == 1_300 + 61_000
    assert c.saved_micro_usd == 0 and c.counterfactual_method == "self"
    assert not c.counterfactual_estimated


def test_no_measured_rate_bills_device_seconds_and_claims_no_saving():
    c = cost(device="cuda:NVIDIA H100")
    assert c.billed_device_seconds == 500.0 and c.cost_micro_usd == 1_300 + 500_000
    assert c.full_cache_cost_micro_usd is None and c.saved_micro_usd is None
    assert c.counterfactual_method is None


def test_rounding_is_half_up_once_per_job():
    # 25 tokens in at 100 per 1k: 2.5 micro-USD -> 3 (banker's rounding would give 2)
    tiny = Work(tokens_in=25, tokens_out=0)
    free = PRICES.model_copy(update={"versions": []})
    assert cost(device="cuda", work=tiny, prices=free).cost_micro_usd == 3
    assert cost(device="cuda", work=Work(tokens_in=15, tokens_out=0), prices=free).cost_micro_usd == 2


def test_legacy_second_price_setting_and_shipped_rates():
    assert PricesSettings(gpu_second_micro_usd=700).device_hour_micro_usd == 2_520_000
    shipped = load_rates()
    assert any(r.model.startswith("SmolLM2") and r.device == "cpu" and "surprisal" in
               r.policy_seconds_per_entry for r in shipped)


class Options(BaseModel):
    policy: PolicyField = "surprisal"
    budget: BudgetField = None


def test_field_types_use_the_contract():
    options = Options(policy="SnapKV", budget={"tokens": 256})
    assert options.policy == "snapkv" and options.budget == Budget.tokens(256)
    assert options.model_dump() == {"policy": "snapkv", "budget": {"tokens": 256}}
    assert Options(budget=0.25).model_dump(mode="json")["budget"] == {"fraction": 0.25}
    with pytest.raises(ValidationError, match="valid policies"):
        Options(policy="bogus")
    for bad in (512, 0.0, -0.5, True, {"tokens": 0}, {"fraction": 2}):
        with pytest.raises(ValidationError, match="budget"):
            Options(budget=bad)
    schema = Options.model_json_schema()["properties"]
    assert "surprisal" in schema["policy"]["enum"] and "namm" not in schema["policy"]["enum"]  # no evolved scorer ships
    assert {"fraction", "tokens"} <= {next(iter(s.get("properties", {"": 0})))
                                      for s in schema["budget"]["anyOf"]}
