"""What a policy reads besides the cache itself, observed while the model reads: one hook for all.

A policy names what it reads through `Policy.make_signals()`; the cache (namm/memory.py) builds
those signals once and calls every one of them at the same points, whatever the policy:

  observe_attention(layer, query, scale)   in each layer's attention, with the forward's queries
  observe_forward(input_ids, logits)       after each forward (`NammCache.after_forward`)
  read(layer, ctx)                         at the layer's update: UpdateContext fields to set
  updated(layer)                           after the layer's update

A signal that reads logits (`needs_logits`) makes the cache run its updates after the forward
instead of inside it (same tokens, same cache: the result is the one an update inside the
forward would give, as reading chunks end where updates are due).

Where the record lives decides how it travels: a per-layer buffer lives in the layer
(`NammLayer.pending_queries`), so snapshots, copies and memory files carry it with the cache's
tensors; a per-cache record (the surprisal of every token read) is the signal's own and travels
through `copy`, `state` / `load_state` and `truncate`.
"""
from __future__ import annotations

import copy as _copy
from typing import TYPE_CHECKING

import torch

from .attention import window_attention

if TYPE_CHECKING:  # the layer and context are only passed through here
    from .memory import NammLayer
    from .policies.base import UpdateContext


class Signal:
    """Base: every hook does nothing; subclasses override what they observe."""

    name = "signal"
    needs_logits = False  # whether `observe_forward` needs every position's logits

    def observe_attention(self, layer: "NammLayer", query: torch.Tensor, scale: float) -> None:
        """In `layer`'s attention, with the forward's post-RoPE queries [B, Hq, q, D]."""

    def observe_forward(self, input_ids: torch.Tensor, logits: torch.Tensor) -> None:
        """After a forward over `input_ids` [B, T] that produced `logits` [B, T, V]."""

    def read(self, layer: "NammLayer", ctx: "UpdateContext") -> dict[str, torch.Tensor | None]:
        """At `layer`'s update: the UpdateContext fields this signal fills."""
        return {}

    def updated(self, layer: "NammLayer") -> None:
        """After `layer`'s update (a per-layer buffer starts over)."""

    # ---- the per-cache record -------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The record as named tensors (a saved memory stores them under `<name>.<key>`)."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back what `state` returned."""

    def truncate(self, tokens: int) -> None:
        """Forget what was observed after the first `tokens` tokens (a cache restored from a snapshot)."""

    def copy(self) -> "Signal":
        """An independent copy (the record cloned)."""
        return _copy.copy(self)


class WindowAttention(Signal):
    """The attention of the window's newest queries over every cached key, recomputed at each
    update (`UpdateContext.attn`, [B, H_kv, R, S], GQA-averaged): what H2O, TOVA, SnapKV and the
    NAMM spectrogram read. `rows`: how many of the newest queries (None = the whole window)."""

    name = "attention"

    def __init__(self, rows: int | None, n_up: int):
        self.rows = rows
        self.n_up = n_up

    def observe_attention(self, layer, query, scale):
        layer.pending_queries.append(query.detach())
        keep_rows = self.rows or (self.n_up + query.shape[2])
        total = sum(q.shape[2] for q in layer.pending_queries)
        while len(layer.pending_queries) > 1 and total - layer.pending_queries[0].shape[2] >= keep_rows:
            total -= layer.pending_queries.pop(0).shape[2]

    def read(self, layer, ctx):
        queries = torch.cat(layer.pending_queries, dim=2)
        rows = min(layer.since_update, queries.shape[2])
        if self.rows is not None:
            rows = min(rows, self.rows)
        queries = queries[:, :, -rows:]
        scale = layer.scale if layer.scale is not None else queries.shape[-1] ** -0.5
        return {"attn": window_attention(queries, ctx.keys, ctx.valid, scale)}

    def updated(self, layer):
        layer.pending_queries = []
