"""What one job costs, billed by the work it did, and what a full KV cache would have cost.

All money is integer micro-dollars (1 USD = 1_000_000). Model (docs/service.md, "Cost reports"):

  price          the price version in force when the job finished, for its device kind
                 (`PricesSettings`: a default version plus later ones, each from its date; a
                 record keeps the price it was billed at)
  tokens         tokens_in/1000 * input price + tokens_out/1000 * output price
  device seconds billed by work done, at the device rate measured for the model and device
                 (service/jobs/device_rates.json, from bench/bench_rates.py):
                   seconds_per_token * (tokens_in + tokens_out)
                 + seconds_per_kv_token_step * kv_token_steps      (exact, counted by namm)
                 + policy_seconds_per_entry[policy] * entries scored by the policy's updates
                 never the wall clock of a possibly loaded machine
  cost           tokens + device seconds * device-hour price / 3600, rounded once, half up

The full-cache counterfactual (`method` names how it was obtained):
  "self"                               the job ran with the full cache: the counterfactual
                                       is its own cost, saving exactly 0 (measured)
  "kv_token_steps_rate:<model>:<dev>"  the same formula with the full cache's KV token-steps
                                       (exact) and no policy: an estimate (estimated=True),
                                       since the full cache did not run; a policy whose
                                       overhead exceeds what it saves shows a loss
  None                                 no measured rate for this model and device: the job is
                                       billed its measured prefill + decode seconds and no
                                       saving is claimed
Nothing scales the run's own seconds by its memory share.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path

from namm.spec import NON_EVICTING_POLICIES
from service.core.settings import PricesSettings, PriceVersion

RATES_FILE = Path(__file__).with_name("device_rates.json")
DEFAULT_VERSION_FROM = date(1970, 1, 1)


@dataclass(frozen=True)
class DeviceRate:
    """Seconds of device time per unit of work, measured for one model on one device kind."""

    model: str
    device: str
    seconds_per_token: float
    seconds_per_kv_token_step: float
    policy_seconds_per_entry: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @property
    def id(self) -> str:
        return f"{self.model}:{self.device}"


@dataclass(frozen=True)
class Work:
    """What a job did, from namm's GenerationStats (service.jobs.usage reads it)."""

    tokens_in: int
    tokens_out: int
    kv_token_steps: float | None = None
    kv_token_steps_full: float | None = None
    entries_scored: float = 0.0
    seconds_prefill: float = 0.0
    seconds_decode: float = 0.0
    seconds_policy: float = 0.0


@dataclass(frozen=True)
class Cost:
    price_id: str
    device_hour_micro_usd: int
    billed_device_seconds: float
    cost_micro_usd: int
    counterfactual_method: str | None = None
    full_cache_device_seconds: float | None = None
    full_cache_cost_micro_usd: int | None = None
    counterfactual_estimated: bool = False

    @property
    def saved_micro_usd(self) -> int | None:
        """Negative when the policy cost more than the full cache would have (a loss)."""
        if self.full_cache_cost_micro_usd is None:
            return None
        return self.full_cache_cost_micro_usd - self.cost_micro_usd


def micro_usd(amount: float) -> int:
    """Round a non-negative amount of micro-dollars half up (2.5 -> 3), once per job."""
    return math.floor(amount + 0.5)


def device_kind(device: str | None) -> str:
    """'cuda:NVIDIA H100 ...' -> 'cuda'; 'cpu' -> 'cpu'; None -> 'unknown'."""
    if not device:
        return "unknown"
    return device.split(":", 1)[0].strip().lower() or "unknown"


def price_versions(prices: PricesSettings) -> list[PriceVersion]:
    default = PriceVersion(
        id="default", effective_from=DEFAULT_VERSION_FROM, device="*",
        device_hour_micro_usd=prices.device_hour_micro_usd,
        input_per_1k_tokens_micro_usd=prices.input_per_1k_tokens_micro_usd,
        output_per_1k_tokens_micro_usd=prices.output_per_1k_tokens_micro_usd)
    return [default, *prices.versions]


def price_at(prices: PricesSettings, when: datetime, device: str | None) -> PriceVersion:
    """The version in force at `when` (UTC day) for the device kind: the latest effective date
    not after that day; on the same date a version for the device beats one for '*'."""
    day = when.astimezone(timezone.utc).date() if when.tzinfo else when.date()
    kind = device_kind(device)
    candidates = [v for v in price_versions(prices)
                  if v.effective_from <= day and v.device in ("*", kind)]
    return max(candidates, key=lambda v: (v.effective_from, v.device != "*"))


def load_rates(path: str | Path | None = None) -> tuple[DeviceRate, ...]:
    return _load_rates(str(path or RATES_FILE))


@lru_cache(maxsize=8)
def _load_rates(path: str) -> tuple[DeviceRate, ...]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(DeviceRate(**{k: v for k, v in entry.items() if k in DeviceRate.__dataclass_fields__})
                 for entry in data["rates"])


def rate_for(rates: tuple[DeviceRate, ...], model: str, device: str | None) -> DeviceRate | None:
    """The rate measured for this model on this device kind; None when there is none."""
    kind = device_kind(device)
    for rate in rates:
        if rate.model == model and rate.device == kind:
            return rate
    return None


def job_cost(prices: PricesSettings, *, policy: str, model: str, device: str | None,
             finished_at: datetime, work: Work, rates: tuple[DeviceRate, ...] | None = None) -> Cost:
    rates = load_rates(prices.rates_path) if rates is None else rates
    price = price_at(prices, finished_at, device)
    tokens = (work.tokens_in * price.input_per_1k_tokens_micro_usd
              + work.tokens_out * price.output_per_1k_tokens_micro_usd) / 1000.0
    per_second = price.device_hour_micro_usd / 3600.0
    evicts = policy not in NON_EVICTING_POLICIES
    rate = rate_for(rates, model, device)
    if rate is not None and work.kv_token_steps is not None and (
            not evicts or policy in rate.policy_seconds_per_entry):
        dense = rate.seconds_per_token * (work.tokens_in + work.tokens_out)
        billed = (dense + rate.seconds_per_kv_token_step * work.kv_token_steps
                  + rate.policy_seconds_per_entry.get(policy, 0.0) * work.entries_scored)
        method = f"kv_token_steps_rate:{rate.id}"
        full_seconds = dense + rate.seconds_per_kv_token_step * (work.kv_token_steps_full or 0.0)
    else:  # no measured rate: what the device was busy with, and no saving claimed
        billed = work.seconds_prefill + work.seconds_decode
        method, full_seconds = None, None
    cost = micro_usd(tokens + billed * per_second)
    common = dict(price_id=price.id, device_hour_micro_usd=price.device_hour_micro_usd,
                  billed_device_seconds=billed, cost_micro_usd=cost)
    if not evicts:  # the run is the full cache: measured, no saving, no loss
        return Cost(**common, counterfactual_method="self", full_cache_device_seconds=billed,
                    full_cache_cost_micro_usd=cost, counterfactual_estimated=False)
    if method is None:
        return Cost(**common)
    return Cost(**common, counterfactual_method=method, full_cache_device_seconds=full_seconds,
                full_cache_cost_micro_usd=micro_usd(tokens + full_seconds * per_second),
                counterfactual_estimated=True)


def reread_cost(prices: PricesSettings, *, model: str, device: str | None, finished_at: datetime,
                tokens: int, kv_token_steps_full: float | None,
                rates: tuple[DeviceRate, ...] | None = None) -> int | None:
    """What reading `tokens` document tokens again with the full cache would cost: the saving of
    a question answered from a stored document (service/memories), apart from its eviction
    saving. The same formula as the full-cache counterfactual above, over the read's measured
    full-cache KV token-steps; None without a measured rate (no saving claimed)."""
    rates = load_rates(prices.rates_path) if rates is None else rates
    rate = rate_for(rates, model, device)
    if rate is None or kv_token_steps_full is None:
        return None
    price = price_at(prices, finished_at, device)
    seconds = rate.seconds_per_token * tokens + rate.seconds_per_kv_token_step * kv_token_steps_full
    return micro_usd(tokens * price.input_per_1k_tokens_micro_usd / 1000.0
                     + seconds * price.device_hour_micro_usd / 3600.0)
