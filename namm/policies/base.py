"""One interface for every memory policy: score the cached tokens, keep the best within a budget.

A policy sees one layer at a time through an `UpdateContext`; tensors are [B, H_kv, S] over the
layer's cache slots (S), with padding slots marked invalid. Decisions are per (layer, KV head).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..signals import Signal, WindowAttention
from ..spec import Budget
from ..surprisal import SurprisalLog


@dataclass
class UpdateContext:
    layer_idx: int
    keys: torch.Tensor        # [B, H, S, D]
    values: torch.Tensor      # [B, H, S, D]
    positions: torch.Tensor   # [B, H, S] original RoPE position of each slot
    valid: torch.Tensor       # [B, H, S] False for padding / evicted slots
    seen: int                 # logical length: tokens read so far, the new ones included
    n_new: int                # tokens since the previous update
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # per-slot policy state, slot axis 2
    # filled by the policy's signals (namm/signals.py, Policy.make_signals); None when not read
    attn: torch.Tensor | None = None  # [B, H, R, S] attention of the last R window queries, GQA-averaged
    surprisal: torch.Tensor | None = None  # [B, seen] nats per token read
    token_ids: torch.Tensor | None = None  # [B, seen] the ids of the tokens read (with the surprisal)

    def slot_state(self, name: str, trailing: tuple[int, ...] = (), fill: float = 0.0) -> torch.Tensor:
        """State tensor `name` grown to the current slot count (new slots get `fill`)."""
        b, h, s = self.valid.shape
        old = self.state.get(name)
        if old is not None and old.shape[2] == s:
            return old
        new = torch.full((b, h, s, *trailing), fill, dtype=torch.float32, device=self.valid.device)
        if old is not None:
            new[:, :, : old.shape[2]] = old
        return new


def budget_capacity(budget: Budget | float | int | None, seen: int) -> int | None:
    """Max slots per (layer, KV head) after `seen` tokens; None: no cap. See namm.spec.Budget."""
    if budget is None:
        return None
    if isinstance(budget, float) and budget <= 1.0:  # the hot path: validated numbers
        return max(1, math.ceil(budget * seen))
    if isinstance(budget, int) and not isinstance(budget, bool):
        return budget
    return Budget.coerce(budget).capacity(seen)


def validate_budget(budget) -> float | int | None:
    """A budget in the library's in-process form (a float fraction or an int token count), from
    anything namm.spec.Budget.coerce takes; BudgetError (an InputError) otherwise."""
    parsed = Budget.coerce(budget)
    return None if parsed is None else parsed.number


class Policy:
    """Base class. Subclasses implement `scores` (higher = more worth keeping)."""

    name = "base"
    needs_attention = False          # whether the window's attention must be recomputed
    attention_rows: int | None = None  # how many of the newest window queries it needs (None = all)
    evicts = True                    # False for the full cache: no updates at all
    needs_surprisal = False          # whether updates need each token's surprisal (ctx.surprisal)
    min_keep = 0                     # the cap never goes below this many slots (short texts stay whole)

    def __init__(self, budget: float | int | None = None):
        self.budget = validate_budget(budget)

    def scores(self, ctx: UpdateContext) -> torch.Tensor:
        raise NotImplementedError

    def make_signals(self, n_up: int) -> list[Signal]:
        """What this policy reads besides the cache (namm/signals.py), built once per cache:
        the window's attention (`needs_attention`, `attention_rows`) and each token's surprisal
        (`needs_surprisal`). A policy that reads something else returns its own signal here.
        A policy that never evicts reads nothing."""
        if not self.evicts:
            return []
        signals: list[Signal] = []
        if self.needs_attention:
            signals.append(WindowAttention(self.attention_rows, n_up))
        if self.needs_surprisal:
            signals.append(SurprisalLog())
        return signals

    def threshold(self, ctx: UpdateContext, scores: torch.Tensor) -> torch.Tensor | None:
        """Optional keep-mask from the scores alone (NAMM keeps score >= 0); None = no threshold."""
        return None

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        """Keep-mask [B, H, S]: threshold, then the budget cap by score, newest token always kept."""
        valid = ctx.valid
        scores = self.scores(ctx).float().masked_fill(~valid, float("-inf"))
        keep = valid.clone()
        thr = self.threshold(ctx, scores)
        if thr is not None:
            keep &= thr
        newest = valid & (ctx.positions == ctx.positions.masked_fill(~valid, -1).amax(-1, keepdim=True))
        keep |= newest
        cap = budget_capacity(self.budget, ctx.seen)
        if cap is not None:
            cap = max(cap, self.min_keep)
        if cap is not None and int(keep.sum(-1).max()) > cap:
            ranked = scores.masked_fill(~keep, float("-inf")).masked_fill(newest, float("inf"))
            # ties go to the newer token: order slots newest first, then sort stably by score
            newest_first = ctx.positions.masked_fill(~valid, -1).argsort(dim=-1, descending=True, stable=True)
            order = ranked.gather(-1, newest_first).argsort(dim=-1, descending=True, stable=True)
            top = newest_first.gather(-1, order[..., : min(cap, ranked.shape[-1])])
            capped = torch.zeros_like(keep).scatter_(-1, top, True)
            keep &= capped
        return keep

    def memory_state(self) -> dict[str, torch.Tensor]:
        """Policy-wide state that reading changes (a running statistic, a random generator), as
        tensors: saved with a document memory and put back before each question, so every
        question starts from the memory as it was read. Per-slot state lives in the cache
        (`UpdateContext.state`), not here. None by default."""
        return {}

    def load_memory_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back what `memory_state` returned."""
        if state:
            raise ValueError(f"policy {self.name!r} keeps no state, got {sorted(state)}")

    def describe(self) -> dict:
        return {"policy": self.name, "budget": self.budget}
