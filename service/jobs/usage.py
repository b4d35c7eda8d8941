"""The usage record of a finished job, from namm's GenerationResult.to_dict() (plus the device
the worker ran on), billed by service/jobs/pricing.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from namm.spec import NON_EVICTING_POLICIES
from service.core.settings import PricesSettings
from service.models import UsageRecord
from service.jobs.pricing import Work, job_cost, reread_cost


def entries_scored(kv_updates: list | None) -> float:
    """Entries the policy scored: per update round, the entries held before it (per layer and
    KV head), summed."""
    return float(sum(row[1] for row in kv_updates or ()))


def work_from_output(output: dict[str, Any]) -> Work:
    steps = output.get("kv_token_steps")
    return Work(
        tokens_in=int(output["tokens_in"]), tokens_out=int(output["tokens_out"]),
        kv_token_steps=None if steps is None else float(steps),
        kv_token_steps_full=(None if output.get("kv_token_steps_full") is None
                             else float(output["kv_token_steps_full"])),
        entries_scored=entries_scored(output.get("kv_updates")),
        seconds_prefill=float(output.get("seconds_prefill") or 0.0),
        seconds_decode=float(output.get("seconds_decode") or 0.0),
        seconds_policy=float(output.get("seconds_policy") or 0.0),
    )


def usage_record(*, job_id: str, tenant_id: int, model: str, policy: str, budget,
                 output: dict[str, Any], prices: PricesSettings,
                 finished_at: datetime) -> UsageRecord:
    """The `full` policy's record carries no budget (it never applied one)."""
    device = str(output.get("device") or "unknown")
    work = work_from_output(output)
    cost = job_cost(prices, policy=policy, model=model, device=device, finished_at=finished_at,
                    work=work)
    allocated = output.get("kv_bytes_allocated_peak")
    not_reread = output.get("tokens_not_reread")
    saved_reading = None if not_reread is None else reread_cost(
        prices, model=model, device=device, finished_at=finished_at, tokens=int(not_reread),
        kv_token_steps_full=output.get("reread_kv_token_steps_full"))
    return UsageRecord(
        job_id=job_id, tenant_id=tenant_id, model=model, policy=policy,
        budget=None if policy in NON_EVICTING_POLICIES else budget,
        tokens_in=work.tokens_in, tokens_out=work.tokens_out,
        kv_kept_fraction=float(output["kv_kept_fraction"]),
        kv_bytes_peak=int(output["kv_bytes_peak"]),
        kv_bytes_full_peak=int(output["kv_bytes_full_peak"]),
        kv_bytes_allocated_peak=None if allocated is None else int(allocated),
        seconds=float(output["seconds"]), seconds_prefill=work.seconds_prefill,
        seconds_decode=work.seconds_decode, seconds_policy=work.seconds_policy, device=device,
        kv_token_steps=work.kv_token_steps, kv_token_steps_full=work.kv_token_steps_full,
        kv_updates=output.get("kv_updates"), policy_entries_scored=work.entries_scored,
        price_id=cost.price_id, device_hour_micro_usd=cost.device_hour_micro_usd,
        billed_device_seconds=cost.billed_device_seconds, cost_micro_usd=cost.cost_micro_usd,
        full_cache_cost_micro_usd=cost.full_cache_cost_micro_usd,
        counterfactual_method=cost.counterfactual_method,
        counterfactual_estimated=cost.counterfactual_estimated,
        tokens_not_reread=None if not_reread is None else int(not_reread),
        reread_cost_micro_usd=saved_reading,
        created_at=finished_at,
    )
