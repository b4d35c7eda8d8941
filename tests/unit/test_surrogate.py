"""The open-loop surrogate's selection: the same top-k per head as scoring each head's kept slots alone."""
import math

import torch

from namm import scorer
from namm.evolution.surrogate import ReplayNamm, Surrogate, relative


def _bare_surrogate(budget, block, sinks, params=None):
    sur = Surrogate.__new__(Surrogate)  # only the selection rule is exercised: no model, no prompts
    sur.policy = ReplayNamm(params=params, budget=budget, threshold=False, block=block, sinks=sinks)
    return sur


def test_select_keeps_each_heads_top_scores_among_its_surviving_slots():
    torch.manual_seed(0)
    params = torch.randn(scorer.num_params()) * 0.2
    weights = scorer.unflatten(params)
    h, s, sinks = 3, 60, 2
    x = torch.randn(h, s, 25)
    alive = torch.rand(h, s) > 0.3
    alive[:, -1] = True
    sur = _bare_surrogate(budget=0.25, block=16, sinks=sinks, params=params.numpy())
    got = sur.select(alive, x, seen=s)
    cap = math.ceil(0.25 * s)
    for head in range(h):
        slots = alive[head].nonzero().flatten()
        sc = scorer.score_tokens(x[head, slots][None], weights, block=16)[0]
        sc[slots < sinks] = float("inf")
        sc[-1] = float("inf")
        want = set(slots[sc.topk(cap).indices].tolist())
        assert set(got[head].nonzero().flatten().tolist()) == want
        assert got[head].sum() == cap


def test_select_keeps_everything_under_the_cap():
    alive = torch.zeros(2, 40, dtype=torch.bool)
    alive[:, -5:] = True
    sur = _bare_surrogate(budget=0.25, block=None, sinks=0)
    assert torch.equal(sur.select(alive, torch.randn(2, 40, 25), 40), alive)


def test_relative_fitness_is_one_at_the_full_cache_and_never_above():
    assert relative(-1.0, -1.0) == 1.0 and relative(-0.5, -1.0) == 1.0
    assert abs(relative(-2.0, -1.0) - math.exp(-1.0)) < 1e-12
