"""Positions for inputs longer than the trained context: re-indexing within the kept cache
(namm/memory.py) and linear interpolation (namm/positions.py), on a small random Llama 3.

Exactness: RoPE attention depends only on relative positions, so when the kept cache is one
contiguous window (the recency policy), re-indexing shifts every kept key and every new query
by the same amount and the logits must equal those with original positions; the positions
themselves stay inside the cache's size."""
import pytest
import torch

import namm
from namm.memory import NammCache, rotate_keys
from namm.policies import make_policy
from namm.positions import interpolation_factor, position_interpolation

from exactness import chunked_logits
from tiny_llama import random_ids, tiny_llama3

N_UP = 32


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=3)


def test_rotations_compose(tiny):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rotary = tiny.model.model.rotary_emb
    k = torch.randn(1, 2, 5, 16)
    pos = torch.tensor([[100, 250, 999, 3000, 4095]])
    new = torch.tensor([[0, 1, 2, 3, 4]])
    cos, sin = rotary(k, pos)
    at_pos, _ = apply_rotary_pos_emb(k, k, cos, sin)
    cos, sin = rotary(k, new)
    at_new, _ = apply_rotary_pos_emb(k, k, cos, sin)
    moved = rotate_keys(at_pos, (new - pos)[:, None, :].expand(1, 2, 5), rotary.inv_freq)
    # float32 angles of thousands of radians: agreement to about 1e-4
    assert torch.allclose(moved, at_new, atol=5e-4), (moved - at_new).abs().max()


def test_reindexed_contiguous_window_equals_original_positions(tiny):
    ids = random_ids(6 * N_UP + 7)
    original = NammCache(tiny.model.config, make_policy("recency", 40), n_up=N_UP)
    reindexed = NammCache(tiny.model.config, make_policy("recency", 40), n_up=N_UP,
                          rope_inv_freq=tiny.model.model.rotary_emb.inv_freq)
    a = chunked_logits(tiny.model, original, ids, N_UP)
    b = chunked_logits(tiny.model, reindexed, ids, N_UP)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    # decoding continues equal
    nxt = random_ids(3, seed=1)
    for i in range(3):
        la = tiny.model(input_ids=nxt[:, i:i + 1], past_key_values=original, use_cache=True).logits
        lb = tiny.model(input_ids=nxt[:, i:i + 1], past_key_values=reindexed, use_cache=True).logits
        assert torch.allclose(la, lb, atol=1e-4)
    assert reindexed.tokens_read() == original.tokens_read() == ids.shape[1] + 3
    # positions stay within the cache: the next one is the longest layer's length
    assert reindexed.get_seq_length() == max(layer.length for layer in reindexed.layers)
    assert reindexed.get_seq_length() < 40 + N_UP < ids.shape[1]
    assert original.get_seq_length() == ids.shape[1] + 3
    assert int(reindexed.layers[0].rope_pos.max()) < reindexed.get_seq_length()


def test_generate_positions_option(tiny):
    short = "x" * 300
    long_text = "y" * 5000  # bytes are tokens: past the 4096 context
    a = namm.generate(tiny, short, "q?", policy="recency", budget=64, max_new_tokens=4,
                      n_up=N_UP, positions="auto")
    b = namm.generate(tiny, short, "q?", policy="recency", budget=64, max_new_tokens=4,
                      n_up=N_UP)
    assert a.answers == b.answers  # auto: nothing changes within the context
    c = namm.generate(tiny, long_text, "q?", policy="streaming_llm", budget=256,
                      max_new_tokens=4, n_up=N_UP, positions="auto")
    d = namm.generate(tiny, long_text, "q?", policy="streaming_llm", budget=256,
                      max_new_tokens=4, n_up=N_UP, positions="reindexed")
    assert c.stats.tokens_in > 4096 and c.answers == d.answers
    with pytest.raises(ValueError):
        namm.generate(tiny, short, "q?", policy="recency", budget=64, positions="sideways")


def test_snapshot_keeps_the_rotation_positions(tiny):
    cache = NammCache(tiny.model.config, make_policy("streaming_llm", 40), n_up=N_UP,
                      rope_inv_freq=tiny.model.model.rotary_emb.inv_freq)
    chunked_logits(tiny.model, cache, random_ids(4 * N_UP), N_UP)
    snap = cache.snapshot()
    before = cache.layers[1].rope_pos.clone()
    tiny.model(input_ids=random_ids(N_UP, seed=3), past_key_values=cache, use_cache=True)
    cache.restore(snap)
    assert torch.equal(cache.layers[1].rope_pos, before)


def test_interpolation_factor_and_restore(tiny):
    assert interpolation_factor(4000, 8192) == 1.0
    assert interpolation_factor(10000, 8192) == 1.25
    original = tiny.model.model.rotary_emb.inv_freq.clone()
    with position_interpolation(tiny, 3 * 4096) as factor:
        assert factor == 3.0
        assert torch.allclose(tiny.model.model.rotary_emb.inv_freq, original / 3)
    assert torch.equal(tiny.model.model.rotary_emb.inv_freq, original)
