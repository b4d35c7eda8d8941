"""One decoding step over several documents' memories: a single model forward takes the next
token of N answers, each row attending over its own `NammCache` (B = 1) with its own mask, RoPE
positions and eviction schedule (see `namm.batch`, which schedules these steps).

Everything but attention (embeddings, projections, MLPs, the LM head) runs over the N rows at
once; attention runs row by row, the same code with the same shapes as a one-row step, so a
row's answer is the one `namm.generate` gives (up to the rounding of N-row matrix products).
`PackedLinears` keeps a copy of the weights laid out for a few rows (CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin

from .attention import _batch_updated, _just_updated
from .memory import NammCache
from .models import LoadedModel


class _RowsLayer(CacheLayerMixin):
    """One decoder layer of a batched step: takes the step's keys and values [N, H, 1, D] and,
    when attention runs, writes each row into its own cache's layer and attends over it."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, rows: "RowsCache", layer_idx: int):
        super().__init__()
        self.rows = rows
        self.layer_idx = layer_idx
        self.announced_keys: torch.Tensor | None = None
        self.announced_values: torch.Tensor | None = None

    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.announced_keys, self.announced_values = key_states, value_states
        _batch_updated.set(self)
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0  # positions are given explicitly, one per row

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0

    def get_max_length(self) -> int:
        return -1

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling) -> torch.Tensor:
        """Attention output [N, q, Hq, D]: row i's query over row i's own cache, with its mask;
        then the row's policy hook, as in a one-row step (namm_sdpa_attention)."""
        self.announced_keys = self.announced_values = None
        groups = getattr(module, "num_key_value_groups", query.shape[1] // key.shape[1])
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        outs = []
        for i, cache in enumerate(self.rows.caches):
            if i in self.rows.failed:
                outs.append(query.new_zeros((1, query.shape[1], query.shape[2], value.shape[-1])))
                continue
            try:
                layer = cache.layers[self.layer_idx]
                q = query[i:i + 1]
                k, v = layer.update(key[i:i + 1], value[i:i + 1])
                _just_updated.set(None)
                mask, is_causal = layer.attention_mask(q.shape[2], groups)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scaling,
                                                     enable_gqa=groups > 1)
                layer.after_attention(q, scale)
            except Exception as exc:  # this row's request fails; the other rows go on
                self.rows.failed[i] = exc
                out = query.new_zeros((1, query.shape[1], query.shape[2], value.shape[-1]))
            outs.append(out)
        return torch.cat(outs, dim=0).transpose(1, 2).contiguous()


class RowsCache(Cache):
    """The cache object of one batched forward: row i is `caches[i]` (each a B = 1 NammCache).
    `failed` maps a row to the exception its own part of the step raised."""

    def __init__(self, caches: list[NammCache], num_layers: int):
        self.caches = caches
        self.failed: dict[int, Exception] = {}
        super().__init__(layers=[_RowsLayer(self, i) for i in range(num_layers)])

    def positions(self, device) -> torch.Tensor:
        """[N, 1]: the RoPE position each row's next token takes (what a one-row forward derives
        from that row's cache)."""
        return torch.tensor([[c.get_seq_length()] for c in self.caches], dtype=torch.long, device=device)


class PackedLinears:
    """Within the block, every `nn.Linear` of a model multiplies by a copy of its weight laid out
    for a few rows at a time, made once and kept until `release` (one more copy of the weights).

    On a CPU, `F.linear` over 8 decoding rows hands MKL the weight as stored, [out, in], which it
    repacks on every call: for 8 rows of SmolLM2-135M the projections take about 2.5 times as
    long as for one row, and the LM head (49152 x 576) 4 times. oneDNN's prepacked linear
    (`"mkldnn"`, the kernel torch.compile's CPU backend uses) or a contiguous W^T (`"transposed"`)
    avoid most of it. One-row forwards (reading, a lone answer) never use it: they stay exactly
    `namm.generate`'s."""

    def __init__(self, model: torch.nn.Module, rows: int = 8, kind: str | None = None):
        if kind is None:
            kind = "mkldnn" if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
                else "transposed"
        if kind not in ("mkldnn", "transposed"):
            raise ValueError(f"kind must be mkldnn or transposed, got {kind!r}")
        self.model, self.rows, self.kind = model, rows, kind
        self.weights: dict[torch.nn.Linear, tuple[torch.Tensor, torch.Tensor]] = {}

    def _packed(self, module: torch.nn.Linear) -> torch.Tensor:
        source, packed = self.weights.get(module, (None, None))
        if source is not module.weight:  # first use, or the weight was replaced
            w = module.weight.detach()
            packed = torch.ops.mkldnn._reorder_linear_weight(w, self.rows) if self.kind == "mkldnn" \
                else w.t().contiguous()
            self.weights[module] = (module.weight, packed)
        return packed

    def _forward(self, module: torch.nn.Linear):
        packed, bias = self._packed(module), module.bias
        if self.kind == "mkldnn":
            def forward(x: torch.Tensor) -> torch.Tensor:
                return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        else:
            def forward(x: torch.Tensor) -> torch.Tensor:
                out = torch.matmul(x, packed)
                return out if bias is None else out + bias
        return forward

    def __enter__(self) -> "PackedLinears":
        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.forward = self._forward(module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear) and "forward" in module.__dict__:
                del module.forward

    def release(self) -> None:
        self.weights.clear()


def packed_linears(lm: LoadedModel, rows: int) -> PackedLinears | None:
    """The PackedLinears a batched step should use on this model (CPU, float32), else None."""
    param = next(lm.model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return None
    try:  # oneDNN's prepacking where this build has it, else a transposed copy
        probe = PackedLinears(torch.nn.Linear(8, 8), rows)
        with torch.no_grad(), probe:
            probe.model(torch.zeros(rows, 1, 8))
        kind = probe.kind
    except Exception:
        kind = "transposed"
    return PackedLinears(lm.model, rows, kind)


@torch.no_grad()
def batched_step(lm: LoadedModel, caches: list[NammCache], tokens: list[int],
                 linears: PackedLinears | None = None) -> tuple[torch.Tensor, dict[int, Exception]]:
    """Feed token `tokens[i]` to `caches[i]` for every row in one forward; return the logits
    [N, V] and the rows that failed. Each cache then gets its own `after_forward`.
    `linears`: compute the projections from prepacked weights (see PackedLinears)."""
    ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=lm.device)
    rows = RowsCache(caches, len(caches[0].layers))
    try:
        if linears is not None:
            with linears:
                out = lm.model(input_ids=ids, past_key_values=rows, position_ids=rows.positions(lm.device),
                               use_cache=True)
        else:
            out = lm.model(input_ids=ids, past_key_values=rows, position_ids=rows.positions(lm.device), use_cache=True)
    finally:
        _batch_updated.set(None)
        _just_updated.set(None)
    for i, cache in enumerate(caches):
        if i in rows.failed:
            continue
        try:
            cache.after_forward(ids[i:i + 1], out.logits[i:i + 1])
        except Exception as exc:
            rows.failed[i] = exc
    return out.logits[:, -1], rows.failed
