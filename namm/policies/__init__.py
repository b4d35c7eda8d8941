"""Memory policies behind one interface (see base.Policy); one small module per policy."""
from __future__ import annotations

from ..errors import NoTrainedScorerError
from ..spec import (CHECKPOINT_POLICIES, DEFAULT_BASELINE_BUDGET, POLICY_NAMES, Budget, no_trained_scorer_message,
                    policy_name)
from .base import Policy, UpdateContext, budget_capacity, validate_budget
from .full import FullCache
from .h2o import H2O
from .l2norm import L2Norm
from .namm import NammPolicy
from .random import RandomPolicy
from .recency import Recency
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM
from .surprisal import SurprisalPolicy
from .tova import TOVA

_CLASSES = (FullCache, SurprisalPolicy, NammPolicy, Recency, StreamingLLM, H2O, L2Norm, SnapKV, TOVA, RandomPolicy)
# in the order of namm.spec.POLICY_NAMES, the one list of names (the service reads it without torch)
POLICIES: dict[str, type[Policy]] = {name: next(c for c in _CLASSES if c.name == name) for name in POLICY_NAMES}
if len(POLICIES) != len(_CLASSES):
    raise RuntimeError(f"namm.spec.POLICY_NAMES and the policy classes disagree: {[c.name for c in _CLASSES]}")


def available_policies() -> list[str]:
    return list(POLICY_NAMES)


def make_policy(name: str, budget: Budget | float | int | None = None, *, model_name: str | None = None,
                checkpoint=None, **kwargs) -> Policy:
    """Build a policy by name.

    `surprisal` (the shipped memory) reads its settings and default budget from the shipped
    checkpoint for `model_name` (or from `checkpoint`). `namm`, the learned attention memory,
    needs an evolved scorer: explicit `params`, or a checkpoint (`checkpoint`, else the shipped
    one) whose scorer is not all zero; otherwise NoTrainedScorerError, which names `surprisal`.
    """
    if isinstance(name, Policy):
        return name
    key = policy_name(name)
    b = "checkpoint" if budget is None else validate_budget(budget)
    if key in CHECKPOINT_POLICIES and "params" not in kwargs:
        from ..checkpoints import default_checkpoint

        ckpt = checkpoint if checkpoint is not None else default_checkpoint(model_name)
        if key == "surprisal" and ckpt is not None and not kwargs:
            return SurprisalPolicy.from_checkpoint(ckpt, budget=b, model_name=model_name)
        if key == "namm":
            pol = None if ckpt is None else NammPolicy.from_checkpoint(ckpt, budget=b, model_name=model_name)
            if pol is None or not pol.has_trained_scorer:
                raise NoTrainedScorerError(no_trained_scorer_message(model_name))
            return pol
    elif checkpoint is not None:
        raise ValueError(f"policy {key!r} reads no checkpoint")
    if budget is None and key not in ("full", "namm"):
        budget = DEFAULT_BASELINE_BUDGET.number
    return POLICIES[key](budget=budget, **kwargs)


__all__ = ["Policy", "UpdateContext", "POLICIES", "available_policies", "make_policy", "budget_capacity", "NammPolicy",
           "SurprisalPolicy"]
