"""Cost of one job in integer micro-dollars, and what a full KV cache would have cost.

Model (documented in docs/service.md):
  tokens  = tokens_in/1000 * input price + tokens_out/1000 * output price
  gpu     = seconds * GPU-second price * memory share
A GPU serving long documents is bounded by KV memory: a cache that holds a fraction r of the
full cache leaves room for 1/r as many concurrent sequences, so a job pays r of the GPU time it
occupies. The full-cache counterfactual pays memory share 1 for the same seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.settings import PricesSettings


@dataclass(frozen=True)
class Cost:
    cost_micro_usd: int
    full_cache_cost_micro_usd: int

    @property
    def saved_micro_usd(self) -> int:
        return self.full_cache_cost_micro_usd - self.cost_micro_usd


def memory_share(kv_bytes_peak: int, kv_bytes_full_peak: int) -> float:
    if kv_bytes_full_peak <= 0:
        return 1.0
    return min(1.0, max(0.0, kv_bytes_peak / kv_bytes_full_peak))


def job_cost(
    prices: PricesSettings,
    *,
    tokens_in: int,
    tokens_out: int,
    seconds: float,
    kv_bytes_peak: int,
    kv_bytes_full_peak: int,
) -> Cost:
    tokens = (
        tokens_in * prices.input_per_1k_tokens_micro_usd
        + tokens_out * prices.output_per_1k_tokens_micro_usd
    ) / 1000.0
    gpu_full = seconds * prices.gpu_second_micro_usd
    gpu = gpu_full * memory_share(kv_bytes_peak, kv_bytes_full_peak)
    return Cost(
        cost_micro_usd=round(tokens + gpu),
        full_cache_cost_micro_usd=round(tokens + gpu_full),
    )
