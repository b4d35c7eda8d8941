"""Recording a pool with attention, warm start and the open-loop surrogate on the real default model."""
import math

import numpy as np
import pytest

from namm.evolution.pool import record
from namm.evolution.surrogate import Surrogate, closed_loop_fitness
from namm.evolution.warmstart import evaluate_recall, fit_norm, train
from namm.policies.namm import NammPolicy

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def rec(lm):
    return record(lm, "niah_single", 700, "train", 0, attention=True, rows=128)


def test_recording_holds_every_layers_updates_and_answer_attention(rec, lm):
    layers = lm.model.config.num_hidden_layers
    t = rec.context_len
    assert 512 < t < 1024 and len(rec.updates) == 2 * layers  # one update at 512 tokens, one at the end
    last = [u for u in rec.updates if u["seen"] == t]
    assert len(last) == layers and last[0]["ema"].shape == (3, t, 17)
    assert rec.importance.shape == (layers, 3, t)
    mass = rec.importance.float().sum(-1)
    # the rest of each row goes to the question and answer tokens themselves
    assert bool((rec.importance >= 0).all()) and bool((mass <= 1.01).all()) and float(mass.min()) > 0.05
    assert math.isfinite(rec.full_log_prob) and rec.full_log_prob < 0


def test_warm_start_learns_to_rank_the_recorded_target(rec):
    norm = fit_norm([rec])
    params = train([rec], norm, block=256, epochs=3, lr=1e-2, sinks=4, recent=0.5, accumulate=4, log=lambda _: None)
    got = evaluate_recall(params, [rec], norm, 256, 0.28, sinks=4, recent=0.5)
    assert got["recall"] > got["recency"] + 0.1 and got["recall"] <= got["oracle"] + 1e-6


def _zero_scorer_fitness(lm, rec):
    norm = fit_norm([rec])
    sur = Surrogate(lm, [rec], norm, budget=0.28, block=256, sinks=4, recent=0.5)
    zeros = np.zeros(NammPolicy.num_params(), dtype=np.float32)
    open_loop = sur.fitness(zeros, [0])
    policy = NammPolicy(params=zeros, budget=0.28, norm=norm, threshold=False, rows=128, block=256, sinks=4,
                        recent=0.5)
    assert all(lp <= 0 for lp in sur.refs[0].full_log_probs)
    return open_loop, closed_loop_fitness(lm, sur.refs, policy)


def test_surrogate_is_exact_when_the_document_is_read_before_the_only_eviction(lm):
    # a zero scorer keeps sinks + the newest tokens whatever the features say, so the open-loop
    # decisions are the closed-loop ones; under 512 tokens the only update is after the whole
    # document, so every key was computed with the full cache and masking must equal eviction
    rec = record(lm, "niah_single", 400, "train", 1, attention=True, rows=128)
    assert rec.context_len < 512
    open_loop, closed = _zero_scorer_fitness(lm, rec)
    assert 0 < closed <= 1 and abs(open_loop - closed) < 1e-4


def test_surrogate_stays_close_when_tokens_are_read_after_an_eviction(rec, lm):
    # past the first update, the closed loop reads later tokens over an evicted cache (their keys
    # differ), while the surrogate uses the full cache's keys: the open-loop approximation
    open_loop, closed = _zero_scorer_fitness(lm, rec)
    assert 0 < closed <= 1 and abs(open_loop - closed) < 0.01
