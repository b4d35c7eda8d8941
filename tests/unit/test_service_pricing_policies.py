"""Cost model in integer micro-dollars; the API's policy list matches the library's."""

import pytest

from service.policies import POLICY_NAMES, check_budget, check_policy
from service.pricing import job_cost, memory_share
from service.settings import PricesSettings

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


def test_policy_list_matches_namm():
    import namm

    assert set(POLICY_NAMES) == set(namm.available_policies())


def test_policy_and_budget_validation():
    assert check_policy("snapkv") == "snapkv"
    with pytest.raises(ValueError, match="valid policies"):
        check_policy("bogus")
    assert check_budget(0.25) == 0.25 and check_budget(256) == 256 and check_budget(None) is None
    assert check_budget(512.0) == 512
    for bad in (0.0, -0.5, -1, 0, True):
        with pytest.raises(ValueError):
            check_budget(bad)
