"""Every policy's selection rule on small hand-made inputs."""
import numpy as np
import pytest
import torch

from namm import scorer
from namm.errors import UnknownPolicyError
from namm.policies import available_policies, make_policy
from namm.policies.base import UpdateContext, budget_capacity, validate_budget
from namm.policies.namm import NammPolicy


def ctx_for(s=8, h=1, keys=None, attn=None, valid=None, d=4):
    positions = torch.arange(s).expand(1, h, s).clone()
    return UpdateContext(
        layer_idx=0,
        keys=keys if keys is not None else torch.randn(1, h, s, d),
        values=torch.randn(1, h, s, d),
        positions=positions,
        valid=valid if valid is not None else torch.ones(1, h, s, dtype=torch.bool),
        seen=s, n_new=s, attn=attn,
    )


def kept(mask):
    return mask[0, 0].nonzero().flatten().tolist()


def test_registry_lists_every_policy_and_rejects_unknown():
    assert set(available_policies()) == {"full", "surprisal", "namm", "recency", "streaming_llm", "h2o", "l2norm", "snapkv",
                                         "tova", "random"}
    with pytest.raises(UnknownPolicyError, match="expected one of"):
        make_policy("lru")


def test_budget_rules():
    assert budget_capacity(0.25, 100) == 25
    assert budget_capacity(0.25, 3) == 1
    assert budget_capacity(40, 100) == 40
    assert budget_capacity(None, 100) is None
    for bad in (0.0, -1, 1.5, "x", True):
        with pytest.raises(ValueError):
            validate_budget(bad)


def test_full_cache_never_evicts():
    assert make_policy("full", 0.1).evicts is False


def test_recency_keeps_the_newest():
    assert kept(make_policy("recency", 3).select(ctx_for())) == [5, 6, 7]


def test_streaming_llm_keeps_sinks_and_recent_window():
    p = make_policy("streaming_llm", 6)
    assert kept(p.select(ctx_for(s=12))) == [0, 1, 2, 3, 10, 11]


def test_h2o_keeps_heavy_hitters_and_accumulates():
    attn = torch.zeros(1, 1, 2, 8)
    attn[..., 1] = 0.5
    attn[..., 4] = 0.3
    attn[..., 2] = 0.1
    c = ctx_for(attn=attn)
    keep = make_policy("h2o", 3).select(c)
    assert kept(keep) == [1, 4, 7]  # two heavy hitters + the newest token
    assert torch.allclose(c.state["h2o_acc"][0, 0, [1, 4]], torch.tensor([1.0, 0.6]))


def test_l2norm_keeps_low_norm_keys():
    keys = torch.ones(1, 1, 8, 4)
    keys[0, 0, [2, 5]] = 0.01
    assert kept(make_policy("l2norm", 3).select(ctx_for(keys=keys))) == [2, 5, 7]


def test_snapkv_pools_votes_of_the_observation_window():
    attn = torch.zeros(1, 1, 4, 16)
    attn[0, 0, :, 3] = 1.0  # a spike at 3: pooling keeps its neighbours too
    p = make_policy("snapkv", 8)
    assert p.attention_rows == 32
    assert kept(p.select(ctx_for(s=16, attn=attn))) == [0, 1, 2, 3, 4, 5, 6, 15]


def test_tova_uses_the_newest_query_only():
    attn = torch.zeros(1, 1, 3, 8)
    attn[0, 0, 0, 1] = 1.0  # an older query liked token 1
    attn[0, 0, -1, 4] = 0.9
    attn[0, 0, -1, 2] = 0.5
    assert kept(make_policy("tova", 3).select(ctx_for(attn=attn))) == [2, 4, 7]


def test_random_keeps_exactly_the_budget_and_is_seeded():
    a = make_policy("random", 4, seed=3).select(ctx_for(s=20))
    b = make_policy("random", 4, seed=3).select(ctx_for(s=20))
    assert int(a.sum()) == 4 and torch.equal(a, b) and bool(a[0, 0, -1])


def test_heads_decide_independently_and_padding_is_never_kept():
    keys = torch.ones(1, 2, 6, 4)
    keys[0, 0, 1] = 0.01
    keys[0, 1, 3] = 0.01
    valid = torch.ones(1, 2, 6, dtype=torch.bool)
    valid[0, 1, 0] = False
    keys[0, 1, 0] = 0.0  # lowest norm of all, but a padding slot
    keep = make_policy("l2norm", 2).select(ctx_for(s=6, h=2, keys=keys, valid=valid))
    assert keep[0, 0].nonzero().flatten().tolist() == [1, 5]
    assert keep[0, 1].nonzero().flatten().tolist() == [3, 5]


def test_namm_zero_parameters_keep_everything():
    p = NammPolicy()
    c = ctx_for(s=40, h=3, attn=torch.softmax(torch.randn(1, 3, 32, 40), -1))
    assert bool(p.select(c).all())
    assert c.state["namm_ema"].shape == (1, 3, 40, 17)
    assert c.state["namm_prev_rows"].shape == (1, 3, 40, 16)


def test_namm_threshold_evicts_negative_scores_but_keeps_the_newest():
    params = np.zeros(scorer.num_params(), dtype=np.float32)
    params[-1] = -1.0  # output bias: every score is -1
    c = ctx_for(s=40, h=3, attn=torch.softmax(torch.randn(1, 3, 32, 40), -1))
    keep = NammPolicy(params=params).select(c)
    assert keep.sum().item() == 3 and bool(keep[..., -1].all())


def test_namm_budget_caps_a_keep_everything_scorer_and_ties_go_to_recent_tokens():
    c = ctx_for(s=40, h=3, attn=torch.softmax(torch.randn(1, 3, 32, 40), -1))
    keep = NammPolicy(budget=0.25).select(c)
    assert keep.sum(-1).tolist() == [[10, 10, 10]]
    assert keep[0, 0].nonzero().flatten().tolist() == list(range(30, 40))


def test_namm_rank_only_keeps_the_budget_even_when_every_score_is_negative():
    params = np.zeros(scorer.num_params(), dtype=np.float32)
    params[-1] = -1.0  # every score is -1: the threshold would evict all but the newest
    c = ctx_for(s=40, h=3, attn=torch.softmax(torch.randn(1, 3, 32, 40), -1))
    keep = NammPolicy(params=params, budget=0.25, threshold=False).select(c)
    assert keep.sum(-1).tolist() == [[10, 10, 10]]
    assert kept(keep) == list(range(30, 40))  # equal scores: the newest win, as recency would


def test_namm_rank_only_follows_the_scores_not_recency():
    params = np.zeros(scorer.num_params(), dtype=np.float32)
    weights = scorer.unflatten(torch.from_numpy(params))
    weights["wh"][0, 0] = 1.0  # score = the spectrogram's DC bin: how much attention the token got
    torch.manual_seed(4)
    c = ctx_for(s=40, h=1, attn=torch.softmax(3 * torch.randn(1, 1, 32, 40), -1))
    pol = NammPolicy(params=params, budget=10, threshold=False)
    scores = pol.scores(ctx_for(s=40, h=1, attn=c.attn))[0, 0]
    keep = pol.select(c)[0, 0]
    top = set(scores[:-1].topk(9).indices.tolist()) | {39}  # the newest token is always kept
    assert set(keep.nonzero().flatten().tolist()) == top
    assert top != set(range(30, 40))


def test_namm_rank_only_needs_a_budget_and_survives_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="needs a budget"):
        NammPolicy(threshold=False)
    NammPolicy(budget=0.3, threshold=False).save(tmp_path / "p.pt")
    loaded = NammPolicy.from_checkpoint(tmp_path / "p.pt")
    assert loaded.use_threshold is False and loaded.budget == 0.3
    # an explicit "no budget" brings the threshold back rather than failing to load
    assert NammPolicy.from_checkpoint(tmp_path / "p.pt", budget=None).use_threshold is True


def test_namm_rows_mode_equals_the_whole_window_when_the_window_fits():
    torch.manual_seed(5)
    params = np.random.default_rng(0).normal(0, 0.1, scorer.num_params()).astype(np.float32)
    attn = torch.softmax(torch.randn(1, 1, 48, 48), -1)
    whole = NammPolicy(params=params, budget=10, threshold=False).scores(ctx_for(s=48, attn=attn))
    rows = NammPolicy(params=params, budget=10, threshold=False, rows=64, block=64).scores(ctx_for(s=48, attn=attn))
    assert torch.allclose(whole, rows, atol=1e-5)


def test_namm_rows_mode_decays_the_old_state_one_step_per_token_read():
    c = ctx_for(s=8)
    c.n_new = 64                           # 64 tokens since the last update, only 32 rows recomputed
    c.attn = torch.zeros(1, 1, 32, 8)      # no attention: the new frames add nothing
    c.state["namm_ema"] = torch.ones(1, 1, 8, 17)
    pol = NammPolicy(budget=4, threshold=False, rows=32)
    pol.token_features(c)
    assert torch.allclose(c.state["namm_ema"], torch.full((1, 1, 8, 17), 0.99**64), rtol=1e-5)


def test_namm_rows_and_block_survive_a_checkpoint(tmp_path):
    NammPolicy(budget=0.3, threshold=False, rows=128, block=256).save(tmp_path / "p.pt")
    loaded = NammPolicy.from_checkpoint(tmp_path / "p.pt")
    assert (loaded.attention_rows, loaded.block) == (128, 256)
    with pytest.raises(ValueError, match="rows"):
        NammPolicy(budget=0.3, threshold=False, rows=40)


def test_namm_sinks_are_kept_whatever_they_score():
    params = np.zeros(scorer.num_params(), dtype=np.float32)
    scorer.unflatten(torch.from_numpy(params))["bh"][0] = 0.0
    c = ctx_for(s=40, h=1, attn=torch.softmax(torch.randn(1, 1, 32, 40), -1))
    keep = kept(NammPolicy(params=params, budget=10, threshold=False, sinks=4).select(c))
    assert keep[:4] == [0, 1, 2, 3] and len(keep) == 10 and keep[4:] == list(range(34, 40))
