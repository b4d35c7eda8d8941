"""The one hook through which policies read what is not in the cache (namm/signals.py), on a small
random Llama 3: a policy's own signal is called at the same points as the built-in ones, its
record reaches the policy's updates, and snapshots, copies and restores carry it; the cache
builds exactly the signals each policy names."""
import pytest
import torch

from namm.generate import prefill
from namm.memory import NammCache
from namm.policies import make_policy
from namm.policies.base import Policy
from namm.signals import Signal, WindowAttention
from namm.surprisal import SurprisalLog

from tiny_llama import random_ids, tiny_llama3

N_UP = 32


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=2)


class TopLogit(Signal):
    """A signal no built-in policy reads: each token's largest logit from the forward before it."""

    name = "top_logit"
    needs_logits = True

    def __init__(self):
        self.values = torch.zeros(1, 0)
        self.attention_calls = 0

    def observe_attention(self, layer, query, scale):
        self.attention_calls += 1

    def observe_forward(self, input_ids, logits):
        self.values = torch.cat([self.values, logits.float().amax(-1)], dim=1)

    def read(self, layer, ctx):
        return {"top_logit": self.values}

    def truncate(self, tokens):
        self.values = self.values[:, :tokens]

    def copy(self):
        new = TopLogit()
        new.values, new.attention_calls = self.values.clone(), self.attention_calls
        return new


class ConfidentTokensFirst(Policy):
    """Keeps the tokens after which the model was least sure, read from its own signal."""

    name = "confident"

    def __init__(self, budget):
        super().__init__(budget)
        self.seen_at_update: list[int] = []

    def make_signals(self, n_up):
        return [TopLogit()]

    def scores(self, ctx):
        assert ctx.top_logit.shape[1] == ctx.seen  # every token read, its logits included
        self.seen_at_update.append(ctx.seen)
        return -ctx.top_logit.gather(1, ctx.positions.reshape(1, -1)).reshape(ctx.positions.shape)


def test_a_policys_own_signal_sees_every_forward_and_layer_and_reaches_its_updates(tiny):
    pol = ConfidentTokensFirst(budget=0.5)
    cache = NammCache(tiny.model.config, pol, n_up=N_UP)
    ids = random_ids(4 * N_UP + 5, seed=2)
    with torch.no_grad():
        prefill(tiny, cache, ids[:, : 3 * N_UP])
        snap = cache.snapshot()
        copy = cache.copy()
        prefill(tiny, cache, ids[:, 3 * N_UP:])
    signal = cache.signal("top_logit")
    assert cache.defer_updates and cache.wants_logits  # it reads logits: updates wait for them
    assert signal.values.shape == ids.shape
    forwards = len(range(0, ids.shape[1], N_UP))
    assert signal.attention_calls == forwards * len(cache.layers)
    assert pol.seen_at_update[:2] == [N_UP, N_UP] and max(pol.seen_at_update) == 4 * N_UP
    assert max(cache.kept_per_layer()) < ids.shape[1]  # it evicted by its own signal
    # the copy taken after three intervals kept the record as it was; a restore forgets later tokens
    assert copy.signal("top_logit").values.shape[1] == 3 * N_UP
    cache.restore(snap)
    assert cache.signal("top_logit").values.shape[1] == 3 * N_UP


def test_the_cache_builds_the_signals_each_policy_names():
    built = {name: [type(s) for s in make_policy(name, 0.3).make_signals(N_UP)]
             for name in ("full", "streaming_llm", "h2o", "snapkv", "tova", "l2norm", "recency", "random")}
    assert built["full"] == [] and built["streaming_llm"] == [] and built["l2norm"] == []
    assert built["h2o"] == built["snapkv"] == built["tova"] == [WindowAttention]
    assert [type(s) for s in make_policy("surprisal").make_signals(N_UP)] == [SurprisalLog]
