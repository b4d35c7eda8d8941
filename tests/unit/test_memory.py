"""The forgetting cache on a small random Llama 3 (GQA 4:1, llama3 RoPE scaling): exactness,
positions, GQA grouping, bytes that really shrink, and an end-to-end generate."""
import pytest
import torch

import namm
from namm.memory import NammCache, window_attention
from namm.policies import make_policy
from namm.spec import Budget

from exactness import (MaskOnlyCache, PositionHashPolicy, RecordingPolicy, chunked_logits,
                       masked_reference_logits)
from tiny_llama import random_ids, tiny_llama3

N_UP = 32


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=3)


def test_uniform_eviction_equals_a_masked_full_forward(tiny):
    ids = random_ids(5 * N_UP + 11)
    rec = RecordingPolicy(make_policy("recency", 40))
    cache = NammCache(tiny.model.config, rec, n_up=N_UP)
    ours = chunked_logits(tiny.model, cache, ids, N_UP)
    assert len(rec.kept_positions) == 5 and cache.get_seq_length() == ids.shape[1]
    ref = masked_reference_logits(tiny, ids, rec.kept_positions, N_UP)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_ragged_per_head_eviction_equals_masking(tiny):
    ids = random_ids(4 * N_UP + 5, seed=1)
    physical = NammCache(tiny.model.config, PositionHashPolicy(), n_up=N_UP)
    masked = MaskOnlyCache(tiny.model.config, PositionHashPolicy(), n_up=N_UP)
    a = chunked_logits(tiny.model, physical, ids, N_UP)
    b = chunked_logits(tiny.model, masked, ids, N_UP)
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    layer = physical.layers[0]
    counts = layer.valid[0, :, : layer.length].sum(-1)
    assert counts.unique().numel() > 1, "heads should keep different numbers of tokens"
    assert layer.length < masked.layers[0].length  # physically smaller


def test_positions_continue_from_the_logical_length(tiny):
    cache = NammCache(tiny.model.config, make_policy("recency", 10), n_up=N_UP)
    chunked_logits(tiny.model, cache, random_ids(2 * N_UP), N_UP)
    layer = cache.layers[0]
    assert layer.length == 10 and cache.get_seq_length() == 2 * N_UP
    assert layer.positions[0, 0, :10].tolist() == list(range(2 * N_UP - 10, 2 * N_UP))
    with torch.no_grad():
        tiny.model(input_ids=random_ids(1), past_key_values=cache, use_cache=True)
    assert layer.positions[0, 0, 10].item() == 2 * N_UP


def test_bytes_really_shrink(tiny):
    full = NammCache(tiny.model.config, make_policy("full"), n_up=N_UP)
    kept = NammCache(tiny.model.config, make_policy("h2o", 0.25), n_up=N_UP)
    ids = random_ids(16 * N_UP)
    chunked_logits(tiny.model, full, ids, N_UP)
    chunked_logits(tiny.model, kept, ids, N_UP)
    held = sum(l.keys.nbytes + l.values.nbytes for l in kept.layers)
    assert held == kept.current_bytes
    assert kept.current_bytes < 0.35 * full.current_bytes
    assert kept.peak_bytes < 0.35 * full.full_cache_bytes()


def test_window_attention_averages_softmax_over_each_kv_group():
    torch.manual_seed(0)
    q = torch.randn(1, 8, 5, 16)  # the 5 newest tokens: the last 5 of 12 slots
    k = torch.randn(1, 2, 12, 16)
    pos = torch.arange(12).expand(1, 2, 12)
    valid = torch.ones(1, 2, 12, dtype=torch.bool)
    valid[0, 1, 3] = False
    qpos = torch.arange(7, 12)
    ours = window_attention(q, k, valid, 0.25)
    ref = torch.zeros(1, 2, 5, 12)
    for head in range(8):
        g = head // 4  # GQA 4:1 -> query heads 0-3 share KV head 0
        logits = (q[0, head] @ k[0, g].T) * 0.25
        allowed = valid[0, g][None] & (pos[0, g][None] <= qpos[:, None])
        ref[0, g] += logits.masked_fill(~allowed, float("-inf")).softmax(-1) / 4
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert float(ours[0, 1, :, 3].abs().max()) == 0.0  # padding gets no attention


def test_generate_end_to_end_on_tiny_llama3(tiny):
    for policy in namm.available_policies():
        if policy == "namm":  # no evolved scorer ships: refused (tests/unit/test_surprisal_policy.py)
            continue
        res = namm.generate(tiny, "lorem ipsum " * 60, ["q1?", "q2?"], policy=policy, budget=0.3,
                            max_new_tokens=4, n_up=N_UP)
        assert len(res.answers) == 2 and res.stats.tokens_out <= 8
        if policy == "full":
            assert res.stats.kv_kept_fraction == 1.0
        else:
            assert res.stats.kv_kept_fraction < 0.5, policy


def test_generate_rejects_bad_input(tiny):
    with pytest.raises(namm.EmptyInputError):
        namm.generate(tiny, "   ", "q?")
    with pytest.raises(namm.UnknownPolicyError):
        namm.generate(tiny, "text", "q?", policy="nope")
    with pytest.raises(ValueError, match="multiple of 16"):
        namm.generate(tiny, "text", "q?", n_up=100)
    long_doc = "x" * 5000  # 5000 byte tokens > 4096 context
    with pytest.raises(namm.ContextTooLongError, match="context"):
        namm.generate(tiny, long_doc, "q?", policy="full", max_new_tokens=2)
    res = namm.generate(tiny, long_doc, "q?", policy="full", truncate=True, max_new_tokens=2, n_up=512)
    assert res.stats.truncated and res.stats.tokens_in <= 4096


def test_decoding_evicts_on_the_same_schedule(tiny):
    from namm.decoding import Decoding
    from namm.generate import greedy_decode, prefill

    cache = NammCache(tiny.model.config, make_policy("streaming_llm", 20), n_up=N_UP)
    logits = prefill(tiny, cache, random_ids(2 * N_UP))
    updates_after_prefill = cache.n_updates
    out = greedy_decode(tiny, cache, logits, 3 * N_UP, stop_ids=set(), decoding=Decoding.plain())  # no loop guard: decode every token
    assert len(out) == 3 * N_UP
    per_layer = len(cache.layers)
    assert cache.n_updates - updates_after_prefill == 2 * per_layer  # 95 fed tokens -> two more updates
    layer = cache.layers[0]
    assert layer.kept_entries() <= 20 + N_UP  # bounded while writing
    assert cache.get_seq_length() == 5 * N_UP - 1


def test_memory_attention_is_plain_sdpa_for_ordinary_caches(tiny):
    """A model switched to the memory attention still works with transformers' own DynamicCache."""
    ids = random_ids(50, seed=3)
    with torch.no_grad():
        ours = tiny.model.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        tiny.model.set_attn_implementation("sdpa")
        try:
            ref = tiny.model.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        finally:
            tiny.model.set_attn_implementation("namm_sdpa")
    assert torch.equal(ours, ref)


def test_work_counters_are_exact_by_hand(tiny):
    """KV token-steps: token t attends to the valid entries held when it is read, itself
    included. recency keeps 10 of each 32-token window: tokens 1-32 see 1..32 entries (528),
    tokens 33-64 see 11..42 (848); a full cache sees 1..64 (2080)."""
    cache = NammCache(tiny.model.config, make_policy("recency", 10), n_up=N_UP)
    chunked_logits(tiny.model, cache, random_ids(2 * N_UP), N_UP)
    layers = len(cache.layers)
    work = cache.take_work()
    assert work["kv_token_steps"] == 528 + 848 and work["kv_token_steps_full"] == 2080
    assert work["kv_updates"] == [[32, 32.0, 10.0], [64, 42.0, 10.0]]
    assert work["policy_updates"] == 2 * layers
    assert cache.take_work()["kv_token_steps"] == 0  # handed over once
    slot = cache.layers[0].slot_bytes
    assert cache.used_bytes == layers * 10 * slot
    # each layer evicts right after its own attention: at most one layer holds 42 at a time
    assert cache.peak_used_bytes == ((layers - 1) * 10 + 42) * slot


def test_full_cache_peak_equals_the_full_cache_figure(tiny):
    """The `full` policy holds exactly what a full cache holds: the same peak bytes (allocation
    headroom is reported apart) and the same KV token-steps; no update is logged."""
    res = namm.generate(tiny, "lorem ipsum " * 20, ["q1?", "q2?"], policy="full",
                        max_new_tokens=6, n_up=N_UP)
    s = res.stats
    assert s.kv_bytes_peak == s.kv_bytes_full_peak > 0
    assert s.kv_bytes_allocated_peak > s.kv_bytes_peak  # headroom: what the old figure showed
    assert s.kv_token_steps == s.kv_token_steps_full > 0 and s.kv_updates == []
    evicting = namm.generate(tiny, "lorem ipsum " * 20, ["q1?", "q2?"], policy="recency",
                             budget=Budget.tokens(16), max_new_tokens=6, n_up=N_UP)
    e = evicting.stats
    assert e.kv_bytes_peak < e.kv_bytes_full_peak and e.kv_token_steps < e.kv_token_steps_full
    assert e.kv_updates and all(after <= 16 for _, _, after in e.kv_updates)


def test_reading_chunks_end_at_updates_and_a_full_cache_reads_in_large_chunks(tiny):
    """An evicting memory's forwards end where its next update is due; a memory that never evicts
    reads FULL_CACHE_CHUNK tokens per forward, with the same logits as 512-token chunks."""
    from namm.generate import prefill
    from namm.memory import FULL_CACHE_CHUNK

    ids = random_ids(FULL_CACHE_CHUNK + 300, seed=11)
    sizes = []
    hook = tiny.model.register_forward_pre_hook(lambda _m, _a, kw: sizes.append(kw["input_ids"].shape[1]),
                                                with_kwargs=True)
    try:
        recency = NammCache(tiny.model.config, make_policy("recency", 0.5), n_up=512)
        prefill(tiny, recency, ids[:, :700])
        assert sizes == [512, 188] and recency.next_chunk() == 512 - 188
        sizes.clear()
        full = NammCache(tiny.model.config, make_policy("full"), n_up=512)
        last = prefill(tiny, full, ids)
        assert sizes == [FULL_CACHE_CHUNK, 300] and full.tokens_read() == ids.shape[1]
    finally:
        hook.remove()
    small = NammCache(tiny.model.config, make_policy("full"), n_up=512)
    for start in range(0, ids.shape[1], 512):
        out = tiny.model(input_ids=ids[:, start:start + 512], past_key_values=small, use_cache=True)
    assert torch.allclose(last, out.logits[:, -1], atol=1e-4)
