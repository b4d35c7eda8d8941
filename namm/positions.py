"""Keeping RoPE positions inside the trained context when a memory policy reads more tokens than
the model was trained on (SmolLM2-135M: 8k).

The eviction cache keeps every token at its original RoPE position and the model derives a new
token's position from the number of tokens read (namm/memory.py), so after 8k tokens the
positions leave the range the model was trained on, even though the cache itself stays small.

`position_interpolation` is linear position interpolation (Chen et al., "Extending Context
Window of Large Language Models via Positional Interpolation", arXiv 2306.15595): for an input
of T tokens read by a model trained on C, every position p is read as p * C / T, by dividing the
rotary inverse frequencies by T / C for the duration of the call. Positions stay in [0, C),
relative distances shrink by the same factor, and nothing about the cache changes (keys are
rotated once, when written; queries and the NAMM window recomputation use the same rotation).
It was chosen over StreamingLLM-style re-indexing because the cache evicts per KV head: a token's
index in the kept cache differs from head to head, while a query has one position for every
head; interpolation needs no re-rotation of cached keys. Its cost is resolution: neighbouring
tokens are 1/factor apart instead of 1. `bench/bench_repo_questions.py --mode needle` measures
it on a needle placed beyond the trained context (docs/benchmarks.md).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def interpolation_factor(total_tokens: int, max_context: int, step: float = 0.25) -> float:
    """T / C rounded up to `step` (1.0 when the input fits)."""
    if total_tokens <= max_context:
        return 1.0
    return math.ceil(total_tokens / max_context / step) * step


@contextmanager
def position_interpolation(lm, total_tokens: int) -> Iterator[float]:
    """Within the block, the model reads positions scaled into its trained context; yields the
    factor. One call at a time per model (a worker process runs one job at a time)."""
    factor = interpolation_factor(total_tokens, lm.max_context)
    rotary = lm.model.model.rotary_emb
    if factor == 1.0:
        yield factor
        return
    original = rotary.inv_freq.detach().clone()
    with torch.no_grad():
        rotary.inv_freq.copy_(original / factor)
    try:
        yield factor
    finally:
        with torch.no_grad():
            rotary.inv_freq.copy_(original)
