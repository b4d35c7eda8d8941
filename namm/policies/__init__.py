"""Memory policies behind one interface (see base.Policy); one small module per policy."""
from __future__ import annotations

from ..errors import UnknownPolicyError
from .base import Policy, UpdateContext, budget_capacity
from .full import FullCache
from .h2o import H2O
from .l2norm import L2Norm
from .namm import NammPolicy
from .random import RandomPolicy
from .recency import Recency
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM
from .tova import TOVA

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (FullCache, NammPolicy, Recency, StreamingLLM, H2O, L2Norm, SnapKV, TOVA, RandomPolicy)
}
# Baselines need a budget to evict anything; this is theirs when none is given.
DEFAULT_BASELINE_BUDGET = 0.25


def available_policies() -> list[str]:
    return list(POLICIES)


def make_policy(name: str, budget: float | int | None = None, *, model_name: str | None = None, **kwargs) -> Policy:
    """Build a policy by name. `namm` loads the shipped checkpoint for `model_name` when there is one."""
    if isinstance(name, Policy):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in POLICIES:
        raise UnknownPolicyError(f"unknown policy {name!r}; expected one of: {', '.join(POLICIES)}")
    if key == "namm" and "params" not in kwargs:
        from ..checkpoints import default_checkpoint

        ckpt = default_checkpoint(model_name)
        if ckpt is not None:
            return NammPolicy.from_checkpoint(ckpt, budget="checkpoint" if budget is None else budget)
    if budget is None and key not in ("full", "namm"):
        budget = DEFAULT_BASELINE_BUDGET
    return POLICIES[key](budget=budget, **kwargs)


__all__ = ["Policy", "UpdateContext", "POLICIES", "available_policies", "make_policy", "budget_capacity", "NammPolicy"]
