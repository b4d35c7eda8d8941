"""Cost model in integer micro-dollars; the API's field types validate through namm.spec."""

import pytest
from pydantic import BaseModel, ValidationError

from namm.spec import Budget
from service.core.contract import BudgetField, PolicyField
from service.core.settings import PricesSettings
from service.jobs.pricing import job_cost, memory_share

PRICES = PricesSettings(input_per_1k_tokens_micro_usd=100, output_per_1k_tokens_micro_usd=300,
                        gpu_second_micro_usd=700)


def test_cost_and_full_cache_counterfactual():
    cost = job_cost(PRICES, tokens_in=10_000, tokens_out=1_000, seconds=10.0,
                    kv_bytes_peak=25, kv_bytes_full_peak=100)
    tokens = 10 * 100 + 1 * 300
    assert cost.full_cache_cost_micro_usd == tokens + 7000
    assert cost.cost_micro_usd == tokens + 7000 // 4
    assert cost.saved_micro_usd == 7000 - 1750
    assert isinstance(cost.cost_micro_usd, int)


def test_memory_share_is_clamped():
    assert memory_share(150, 100) == 1.0  # a policy never costs more than the full cache
    assert memory_share(0, 0) == 1.0
    assert memory_share(30, 100) == pytest.approx(0.3)


class Options(BaseModel):
    policy: PolicyField = "namm"
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
    assert "namm" in schema["policy"]["enum"]
    assert {"fraction", "tokens"} <= {next(iter(s.get("properties", {"": 0})))
                                      for s in schema["budget"]["anyOf"]}
