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


def score_tokens(x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """x [N, L, 25] ordered oldest -> newest, with any padding at the *start* -> scores [N, L].

    Padding first means no real token ever attends to padding under the backward mask.
    """
    q = x @ weights["wq"] + weights["bq"]
    k = x @ weights["wk"] + weights["bk"]
    v = x @ weights["wv"] + weights["bv"]
    h = backward_attention(q, k, v)
    out = h @ weights["wo"] + weights["bo"]
    r, m = out.chunk(2, dim=-1)
    y = x * (1 + m) + r
    return (y @ weights["wh"] + weights["bh"]).squeeze(-1)
