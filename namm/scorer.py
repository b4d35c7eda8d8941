"""BAM: the backward-attention memory scorer. ~4.2k parameters shared by every layer and head.

One single-head self-attention layer (hidden 32) in which each token attends to itself and to
newer tokens only, an output split into residual / multiplicative halves (x * (1 + m) + r), and
a linear head to one score. Keep a token when its score >= 0; all-zero parameters keep everything.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .features import FEATURE_DIM

HIDDEN = 32


def param_shapes(d_in: int = FEATURE_DIM, hidden: int = HIDDEN) -> list[tuple[str, tuple[int, ...]]]:
    return [
        ("wq", (d_in, hidden)), ("bq", (hidden,)),
        ("wk", (d_in, hidden)), ("bk", (hidden,)),
        ("wv", (d_in, hidden)), ("bv", (hidden,)),
        ("wo", (hidden, 2 * d_in)), ("bo", (2 * d_in,)),
        ("wh", (d_in, 1)), ("bh", (1,)),
    ]


def num_params() -> int:
    return sum(math.prod(s) for _, s in param_shapes())


def unflatten(params: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split the flat vector CMA-ES evolves into named weight tensors."""
    if params.numel() != num_params():
        raise ValueError(f"BAM expects {num_params()} parameters, got {params.numel()}")
    out, i = {}, 0
    for name, shape in param_shapes():
        n = math.prod(shape)
        out[name] = params[i:i + n].view(shape)
        i += n
    return out


def backward_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention where token i sees tokens j >= i, for [N, L, H] inputs.

    Run as ordinary causal attention on the reversed sequence, so the fused SDPA kernel applies
    its causal mask without materialising an L x L mask.
    """
    rq, rk, rv = (t.flip(1).unsqueeze(1) for t in (q, k, v))
    out = F.scaled_dot_product_attention(rq, rk, rv, is_causal=True)
    return out.squeeze(1).flip(1)


def blocked_backward_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """Backward attention within blocks: token i sees the tokens j >= i of its own block.

    Blocks of `block` tokens are counted from the newest token, so the newest tokens share the
    first block whatever the length. Cost and memory are linear in L (the full backward mask is
    quadratic, which dominated NAMM's update at 16k tokens), and every block runs in SDPA's fused
    causal kernel on the reversed sequence (a banded mask would fall back to the unfused path).
    Equal to `backward_attention` when L <= block.
    """
    n, length, hidden = q.shape
    if length <= block:
        return backward_attention(q, k, v)
    blocks = -(-length // block)
    pad = blocks * block - length

    def reversed_blocks(t: torch.Tensor) -> torch.Tensor:
        # padding goes after the oldest token, where the causal mask hides it from every real token
        return torch.cat([t.flip(1), t.new_zeros(n, pad, hidden)], 1).view(n, blocks, block, hidden)

    out = F.scaled_dot_product_attention(reversed_blocks(q), reversed_blocks(k), reversed_blocks(v), is_causal=True)
    return out.reshape(n, blocks * block, hidden)[:, :length].flip(1)


def score_tokens(x: torch.Tensor, weights: dict[str, torch.Tensor], block: int | None = None) -> torch.Tensor:
    """x [N, L, 25] ordered oldest -> newest, with any padding at the *start* -> scores [N, L].

    Padding first means no real token ever attends to padding under the backward mask. With a
    `block`, each token attends only to the newer tokens of its block (linear cost).
    """
    q = x @ weights["wq"] + weights["bq"]
    k = x @ weights["wk"] + weights["bk"]
    v = x @ weights["wv"] + weights["bv"]
    h = backward_attention(q, k, v) if block is None else blocked_backward_attention(q, k, v, block)
    out = h @ weights["wo"] + weights["bo"]
    r, m = out.chunk(2, dim=-1)
    y = x * (1 + m) + r
    return (y @ weights["wh"] + weights["bh"]).squeeze(-1)
