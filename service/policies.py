"""The memory policies the API accepts, known without importing namm (which imports torch).

tests/unit/test_service_policies.py checks this list against namm.available_policies().
"""

from __future__ import annotations

POLICY_NAMES: tuple[str, ...] = (
    "full",
    "namm",
    "recency",
    "streaming_llm",
    "h2o",
    "l2norm",
    "snapkv",
    "tova",
    "random",
)


def check_policy(name: str) -> str:
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}")
    return name


def check_budget(budget: float | int | None) -> float | int | None:
    """float in (0, 1]: kept fraction; int >= 1: tokens per layer; None: the policy's default."""
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise ValueError("budget must be a number")
    if isinstance(budget, int) or (isinstance(budget, float) and budget.is_integer() and budget > 1):
        if int(budget) < 1:
            raise ValueError("an integer budget (tokens per layer) must be >= 1")
        return int(budget)
    if not 0.0 < float(budget) <= 1.0:
        raise ValueError("a fractional budget must be in (0, 1]")
    return float(budget)
