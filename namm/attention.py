"""Attention for the eviction cache (namm/memory.py): the causal mask of a chunk over a cache,
the window attention a policy scores from, RoPE re-rotation of kept keys, and the `namm_sdpa`
attention function transformers calls, which masks evicted slots and hands the layer to its
policy right after the layer's attention."""
from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .memory import NammLayer

ATTN_IMPLEMENTATION = "namm_sdpa"
# Cache.update and the attention call happen back to back in one attention module's forward;
# the layer that was just updated announces itself here so the attention function can find it.
_just_updated: ContextVar["NammLayer | None"] = ContextVar("namm_just_updated", default=None)
# batched decoding (namm/batch.py): a layer holding one token of each of several requests, whose
# own caches it updates and attends over row by row, announces itself here the same way
_batch_updated: ContextVar["object | None"] = ContextVar("namm_batch_updated", default=None)
_ROW_BLOCK = 64  # window queries scored per block: bounds the recomputation's memory, stays in cache


def _causal_block_mask(q_len: int, kv_len: int, device) -> torch.Tensor:
    """[q, kv] bool: the last q slots are the queries themselves, everything before is visible."""
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    mask[:, kv_len - q_len:] = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
    return mask


def window_attention(queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of the window's queries over every cached key, averaged per KV group.

    queries [B, Hq, R, D] are the R newest tokens, which are also the last R slots of `keys`
    [B, Hkv, S, D] (nothing is evicted between updates), so causality only concerns that corner.
    Returns [B, Hkv, R, S] float32 probabilities. Rows are computed in blocks (R_blk x S at a
    time), never as a T x T matrix.
    """
    b, hq, r, d = queries.shape
    hkv, s = keys.shape[1], keys.shape[2]
    groups = hq // hkv
    q = queries.float().reshape(b, hkv, groups, r, d)
    k_t = (keys.float() * scale).transpose(-1, -2)  # [B, Hkv, D, S]
    padding = None
    if not bool(valid.all()):
        padding = torch.zeros(b, hkv, 1, 1, s, device=keys.device).masked_fill_(~valid[:, :, None, None], float("-inf"))
    future = torch.ones(r, r, dtype=torch.bool, device=keys.device).triu(1)  # query i cannot see window token j > i
    out = torch.empty(b, hkv, r, s, dtype=torch.float32, device=keys.device)
    for start in range(0, r, _ROW_BLOCK):
        stop = min(r, start + _ROW_BLOCK)
        n = stop - start
        # the group's query heads stacked as rows of one GEMM per KV head (no broadcast copy of K)
        logits = torch.matmul(q[:, :, :, start:stop].reshape(b, hkv, groups * n, d), k_t).view(b, hkv, groups, n, s)
        if padding is not None:
            logits.add_(padding)
        logits[..., s - r:].masked_fill_(future[start:stop], float("-inf"))
        torch.mean(logits.softmax(dim=-1), dim=2, out=out[:, :, start:stop])
    return out


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys [B, H, S, D] rotated by `delta` [B, H, S] positions (Llama's rotate-half RoPE)."""
    angles = delta[..., None].to(torch.float32) * inv_freq.to(keys.device)  # [B, H, S, D/2]
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().to(keys.dtype), emb.sin().to(keys.dtype)
    half = keys.shape[-1] // 2
    rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
    return keys * cos + rotated_half * sin


def _plain_sdpa(module, query, key, value, attention_mask, scaling):
    """SDPA for caches that are not NammCache (or no cache): plain causal attention."""
    q_len, kv_len = query.shape[2], key.shape[2]
    groups = getattr(module, "num_key_value_groups", 1)
    mask, is_causal = None, False
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        mask = attention_mask
    elif q_len == kv_len and q_len > 1:
        is_causal = True
    elif q_len > 1:
        mask = _causal_block_mask(q_len, kv_len, query.device)[None, None]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal,
                                          scale=scaling, enable_gqa=groups > 1)


def namm_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    rows = _batch_updated.get()
    if rows is not None and key is rows.announced_keys:
        _batch_updated.set(None)
        return rows.attend(module, query, key, value, scaling), None
    layer = _just_updated.get()
    if layer is None or layer.keys is None or key.data_ptr() != layer.keys.data_ptr():
        out = _plain_sdpa(module, query, key, value, attention_mask, scaling)
        return out.transpose(1, 2).contiguous(), None
    _just_updated.set(None)
    groups = getattr(module, "num_key_value_groups", query.shape[1] // key.shape[1])
    mask, is_causal = layer.attention_mask(query.shape[2], groups)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal,
                                         scale=scaling, enable_gqa=groups > 1)
    layer.after_attention(query, scaling if scaling is not None else query.shape[-1] ** -0.5)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, namm_sdpa_attention)
