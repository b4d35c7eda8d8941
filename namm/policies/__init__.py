"""Memory policies behind one interface (see base.Policy); one small module per policy."""
from __future__ import annotations

from ..spec import DEFAULT_BASELINE_BUDGET, POLICY_NAMES, Budget, policy_name
from .base import Policy, UpdateContext, budget_capacity, validate_budget
from .full import FullCache
from .h2o import H2O
from .l2norm import L2Norm
from .namm import NammPolicy
from .random import RandomPolicy
from .recency import Recency
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM
from .tova import TOVA

_CLASSES = (FullCache, NammPolicy, Recency, StreamingLLM, H2O, L2Norm, SnapKV, TOVA, RandomPolicy)
# in the order of namm.spec.POLICY_NAMES, the one list of names (the service reads it without torch)
POLICIES: dict[str, type[Policy]] = {name: next(c for c in _CLASSES if c.name == name) for name in POLICY_NAMES}
if len(POLICIES) != len(_CLASSES):
    raise RuntimeError(f"namm.spec.POLICY_NAMES and the policy classes disagree: {[c.name for c in _CLASSES]}")


def available_policies() -> list[str]:
    return list(POLICY_NAMES)


def make_policy(name: str, budget: Budget | float | int | None = None, *, model_name: str | None = None,
                **kwargs) -> Policy:
    """Build a policy by name. `namm` loads the shipped checkpoint for `model_name` when there is one."""
    if isinstance(name, Policy):
        return name
    key = policy_name(name)
    if key == "namm" and "params" not in kwargs:
        from ..checkpoints import default_checkpoint

        ckpt = default_checkpoint(model_name)
        if ckpt is not None:
            return NammPolicy.from_checkpoint(ckpt, budget="checkpoint" if budget is None else validate_budget(budget),
                                              model_name=model_name)
    if budget is None and key not in ("full", "namm"):
        budget = DEFAULT_BASELINE_BUDGET.number
    return POLICIES[key](budget=budget, **kwargs)


__all__ = ["Policy", "UpdateContext", "POLICIES", "available_policies", "make_policy", "budget_capacity", "NammPolicy"]
