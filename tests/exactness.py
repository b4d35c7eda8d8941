"""Helpers that prove eviction is exact: physical eviction == masking the same tokens out."""
from __future__ import annotations

import math

import torch

from namm.memory import NammCache, NammLayer
from namm.policies.base import Policy


class PositionHashPolicy(Policy):
    """Test-only policy: keeps a token by a fixed function of (layer, head, position), so two runs
    make identical decisions and heads keep ragged counts."""

    name = "position_hash"

    def scores(self, ctx):
        h = torch.arange(ctx.valid.shape[1]).view(1, -1, 1)
        return torch.sin(ctx.positions.float() * 0.37 * (ctx.layer_idx * 7 + h * 3 + 1))

    def threshold(self, ctx, scores):
        return scores > -0.3


class RecordingPolicy(Policy):
    """Wraps a policy and records, per update of layer 0 head 0, the positions it kept."""

    def __init__(self, inner: Policy):
        super().__init__(inner.budget)
        self.inner = inner
        self.name, self.needs_attention = inner.name, inner.needs_attention
        self.attention_rows, self.evicts = inner.attention_rows, inner.evicts
        self.kept_positions: list[set[int]] = []

    def select(self, ctx):
        keep = self.inner.select(ctx)
        if ctx.layer_idx == 0:
            self.kept_positions.append(set(ctx.positions[0, 0][keep[0, 0]].tolist()))
        return keep


class MaskOnlyLayer(NammLayer):
    """Reference layer: 'evicts' by flipping validity flags, never moving or freeing anything."""

    def _compact(self, keep):
        s = self.length
        self.valid[:, :, :s] &= keep
        self.n_invalid = int((~self.valid[:, :, :s]).sum())


class MaskOnlyCache(NammCache):
    def __init__(self, config, policy, n_up=512):
        super().__init__(config, policy, n_up)
        self.layers = [MaskOnlyLayer(self, i) for i in range(len(self.layers))]


@torch.no_grad()
def chunked_logits(model, cache, ids: torch.Tensor, n_up: int) -> torch.Tensor:
    """Logits for every position, feeding update-aligned chunks (as namm.prefill does)."""
    out = []
    for start in range(0, ids.shape[1], n_up):
        out.append(model(input_ids=ids[:, start:start + n_up], past_key_values=cache, use_cache=True).logits)
    return torch.cat(out, dim=1)[0]


@torch.no_grad()
def masked_reference_logits(lm, ids: torch.Tensor, kept_after_update: list[set[int]], n_up: int) -> torch.Tensor:
    """Plain eager full-sequence forward where query i cannot see tokens evicted before its chunk ran."""
    t = ids.shape[1]
    evicted_at = torch.full((t,), math.inf)
    alive = set(range(t))
    for u, kept in enumerate(kept_after_update):
        seen = (u + 1) * n_up
        for j in range(seen):
            if j in alive and j not in kept:
                evicted_at[j] = u
                alive.discard(j)
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    visible = (j <= i) & (evicted_at[None, :] >= (i // n_up).float())
    mask = torch.zeros(t, t).masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]
    model = lm.model
    model.set_attn_implementation("eager")
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(t)[None], use_cache=False).logits[0]
    finally:
        from namm.memory import ATTN_IMPLEMENTATION
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
