"""The CMA-ES over NAMM's attention scorer on top of the surprisal channel
(namm/evolution/scorer_search.py): the zero scorer is the surprisal channel, the replayed per-layer
masks and the surrogate equal the real cache when the document is read before the only eviction,
and a run resumes; on a tiny random Llama 3 (the real model's runs are commands, not tests)."""
import json

import numpy as np
import pytest
import torch

from namm import scorer
from namm.evolution import scorer_search as ss
from namm.features import N_BINS, RunningNorm
from namm.evolution.pool import PoolPrompt, full_pass
from namm.evolution.surprisal_search import replay_keep
from namm.evolution.surrogate import answer_log_prob, masked_answer_log_probs, relative
from namm.generate import continuation_logits, prefill
from namm.memory import NammCache
from namm.policies import make_policy
from namm.policies.namm import NammPolicy
from tests.tiny_llama import random_ids, tiny_llama3

N = 192  # one update, at the end of the document: open loop is then exact


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(seed=3)


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    """A checkpoint holding a surprisal channel (what the search adds the scorer to), with a
    spectrogram normalisation at the scale of the tiny model's attention."""
    path = tmp_path_factory.mktemp("ckpt") / "channel.pt"
    norm = RunningNorm(torch.zeros(N_BINS), torch.full((N_BINS,), 1e-5), count=1.0, frozen=True)
    NammPolicy(budget=0.3, threshold=False, sinks=2, recent=0.2, surprise_mix={"max:9": 1.0, "max:1": 0.05},
               block=64, norm=norm).save(path)
    return path


def _prompt(tiny, seed: int) -> PoolPrompt:
    ids, q, gold = random_ids(N, seed=seed), random_ids(6, seed=seed + 1), random_ids(4, seed=seed + 2)
    cache, surprisal = full_pass(tiny, ids, n_up=N)
    kv = [(layer.keys[:, :, : layer.length], layer.values[:, :, : layer.length]) for layer in cache.layers]
    full_lp = masked_answer_log_probs(tiny, kv, None, q, gold)[0]
    return PoolPrompt("passkey", N, seed, "train", ids, q, gold, correct=1.0, prediction="", full_log_prob=full_lp,
                      surprisal=surprisal.to(torch.float16))


def _candidate(seed: int) -> np.ndarray:
    return (torch.randn(scorer.num_params(), generator=torch.Generator().manual_seed(seed)) * 3).numpy()


def test_the_head_subspace_is_the_scorers_linear_head():
    idx = ss.subspace_indices("head")
    params = torch.from_numpy(ss.full_params(np.arange(1, len(idx) + 1, dtype=np.float32), idx))
    w = scorer.unflatten(params)
    assert len(idx) == 26 and w["wh"].flatten().tolist() == list(range(1, 26)) and w["bh"].item() == 26
    assert all(not w[k].any() for k in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"))
    assert len(ss.subspace_indices("all")) == scorer.num_params()
    with pytest.raises(ValueError, match="--params"):
        ss.subspace_indices("tail")


def test_the_zero_scorer_is_the_surprisal_channel_in_every_layer(tiny, channel):
    p = _prompt(tiny, 10)
    pol = ss.base_policy(channel, 0.3)
    masks = ss.DocumentPass(tiny, p, pol, n_up=N).keep_masks(pol)
    want = replay_keep(pol, p.surprisal.float(), n_up=N)
    assert 0 < int(want.sum()) < N
    for m in masks:
        assert torch.equal(m, want.expand_as(m))


def test_replayed_masks_equal_the_real_namm_cache_and_differ_by_layer(tiny, channel):
    """A nonzero scorer: each layer and KV head keeps what the real NAMM keeps reading the document,
    and the layers keep different tokens (the scorer reads each layer's own attention)."""
    p = _prompt(tiny, 20)
    params = _candidate(21)
    replay = ss.base_policy(channel, 0.3)
    replay.set_params(params)
    masks = ss.DocumentPass(tiny, p, replay, n_up=N).keep_masks(replay)
    real = ss.candidate_policy(channel, 0.3, params)
    cache = NammCache(tiny.model.config, real, n_up=N)
    prefill(tiny, cache, p.ctx_ids)
    cache.flush()
    for layer, mask in zip(cache.layers, masks):
        for head in range(mask.shape[0]):
            kept = layer.positions[0, head, : layer.length][layer.valid[0, head, : layer.length]]
            assert kept.sort().values.tolist() == mask[head].nonzero().flatten().tolist()
    assert not torch.equal(masks[0], masks[1])


def test_the_surrogate_scores_each_candidate_as_the_closed_loop_does(tiny, channel):
    prompts = [_prompt(tiny, 30), _prompt(tiny, 40)]
    candidates = [np.zeros(scorer.num_params(), dtype=np.float32), _candidate(31), _candidate(32)]
    policy = ss.base_policy(channel, 0.3)
    got = ss.surrogate_fitness(tiny, prompts, candidates, policy, n_up=N)
    for params, fit in zip(candidates, got):
        real = ss.candidate_policy(channel, 0.3, params)
        vals = []
        for p in prompts:
            cont = torch.cat([p.q_ids, p.gold_ids], 1)
            logits = continuation_logits(tiny, p.ctx_ids, cont, policy=real, n_up=N)
            vals.append(relative(answer_log_prob(logits[-p.gold_ids.shape[1]:], p.gold_ids), p.full_log_prob))
        # the same kept slots (test above); float32 sums in another order: masked and batched vs compacted
        assert fit == pytest.approx(float(np.mean(vals)), abs=5e-4)
    assert len(set(round(f, 6) for f in got)) > 1


def test_a_run_resumes_and_exports_a_namm_file(tiny, channel, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for seed in (50, 60, 70):
        p = _prompt(tiny, seed)
        p.save(pool / p.name)
    args = dict(subspace="head", population=4, batch=2, sigma=0.5, budget=0.3, seed=0, n_up=N, log=lambda _: None)
    ss.evolve(tiny, channel, pool, tmp_path / "a", generations=2, **args)
    ss.evolve(tiny, channel, pool, tmp_path / "b", generations=1, **args)
    ss.evolve(tiny, channel, pool, tmp_path / "b", generations=2, **args)  # resumed after one generation
    a, b = (torch.load(tmp_path / d / "state.pt", weights_only=False) for d in ("a", "b"))
    from namm.evolution.optimizer import load_optimizer
    np.testing.assert_array_equal(load_optimizer(a["optimizer"]).mean, load_optimizer(b["optimizer"]).mean)
    rows = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("generation,best,population_mean,mean_before,surprisal")
    out = tmp_path / "namm.pt"
    pol = ss.export(channel, tmp_path / "a" / "state.pt", out)
    assert pol.has_trained_scorer and pol.surprise_mix == {"max:9": 1.0, "max:1": 0.05} and pol.recent == 0.2
    assert scorer.unflatten(pol.params)["wq"].abs().sum() == 0  # only the head evolved
    assert make_policy("namm", checkpoint=out).has_trained_scorer


def test_a_candidate_scored_closed_loop_exports_as_drawn(channel, tmp_path):
    corr = tmp_path / "correlation.json"
    corr.write_text(json.dumps({"candidates": 3, "sigma": 0.5, "params": 26, "seed": 4, "budget": 0.3,
                                "closed_loop": [0.7, 0.8, 0.6]}))
    pol = ss.export_candidate(channel, corr, 1, tmp_path / "c1.pt")
    want = ss.correlation_candidates(3, 0.5, 26, 4)[1]
    np.testing.assert_allclose(pol.params.numpy()[ss.subspace_indices("head")], want, rtol=1e-6)
    assert pol.surprise_mix == {"max:9": 1.0, "max:1": 0.05}
    with pytest.raises(ValueError, match="candidate"):
        ss.export_candidate(channel, corr, 0, tmp_path / "c0.pt")  # the zero scorer is not a NAMM
