"""The CMA-ES over NAMM's surprisal channel (namm/evolution/surprisal_search.py): the pooled views,
the replayed keep-mask and the batched masked teacher forcing, against the real cache on a tiny
random Llama 3 (the real model's runs are commands, not tests)."""
import numpy as np
import pytest
import torch

from namm.evolution.pool import full_pass
from namm.evolution.surprisal_search import BANK, candidate_policy, replay_keep, start_vector
from namm.evolution.surrogate import answer_log_prob, masked_answer_log_probs
from namm.generate import continuation_logits, prefill
from namm.memory import NammCache
from namm.policies.namm import NammPolicy
from namm.surprisal import mixed_surprisal, parse_view, surprisal_view
from tests.tiny_llama import random_ids, tiny_llama3


def test_views_pool_the_surprisal_as_named():
    sur = torch.tensor([[0.0, 0, 0, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]])
    seen = 100  # wide enough that no window is narrowed
    assert surprisal_view(sur, "max:3", seen)[0, 2:5].tolist() == [5, 5, 5]
    assert surprisal_view(sur, "ahead:3", seen)[0].tolist()[:5] == [0, 5, 5, 5, 0]  # leads up to it
    assert surprisal_view(sur, "behind:3", seen)[0].tolist()[2:7] == [0, 5, 5, 5, 0]  # follows it
    assert surprisal_view(sur, "mean:3", seen)[0, 3].item() == pytest.approx(5 / 3)
    assert surprisal_view(sur, "max:9", 14)[0].tolist() == sur[0].tolist()  # 14 tokens: narrowed to 1
    mixed = mixed_surprisal(sur, {"max:3": 1.0, "ahead:3": -0.5}, seen)
    assert torch.allclose(mixed, surprisal_view(sur, "max:3", seen) - 0.5 * surprisal_view(sur, "ahead:3", seen))
    for bad in ("max:4", "min:3", "ahead:0", "max"):
        with pytest.raises(ValueError):
            parse_view(bad)


def test_the_scalar_channel_is_the_one_view_mix():
    pol = NammPolicy(budget=0.3, surprise=2.0, surprise_pool=33)
    assert pol.surprise_mix == {"max:33": 2.0} and pol.needs_surprisal and not pol.needs_attention
    assert NammPolicy(budget=0.3).needs_surprisal is False


def test_the_start_vector_is_the_token_channel_it_was_evolved_from():
    pol = candidate_policy(start_vector(), 0.28)
    assert pol.surprise_mix == {"max:65": 1.0} and pol.recent == 0.25 and pol.sinks == 4
    assert len(start_vector()) == len(BANK) + 1


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(seed=3)


def test_replay_equals_the_cache_when_the_document_is_read_before_the_only_eviction(tiny):
    """One update (at the end of the document): the replayed mask is exactly what the real
    surprisal NAMM keeps in every layer and head."""
    ids = random_ids(192, seed=4)
    x = start_vector({"max:9": 1.0, "ahead:17": 0.5, "mean:33": -0.2}, recent=0.2)
    pol = candidate_policy(x, 0.3)
    pol.min_keep = 0  # a tiny text: let it be cut
    cache = NammCache(tiny.model.config, pol, n_up=192)
    prefill(tiny, cache, ids)
    cache.flush()
    _, surprisal = full_pass(tiny, ids, n_up=192)
    assert torch.allclose(surprisal, cache.signal("surprisal").values[0], atol=1e-5)
    want = replay_keep(pol, surprisal, n_up=192).nonzero().flatten()
    assert 0 < len(want) < 192
    for layer in cache.layers:
        for head in range(layer.positions.shape[1]):
            kept = layer.positions[0, head, : layer.length][layer.valid[0, head, : layer.length]]
            assert kept.sort().values.tolist() == want.tolist()


def test_masked_teacher_forcing_equals_eviction_and_batches(tiny):
    ids, q, ans = random_ids(192, seed=5), random_ids(6, seed=6), random_ids(4, seed=7)
    cache, surprisal = full_pass(tiny, ids, n_up=192)
    kv = [(layer.keys[:, :, : layer.length], layer.values[:, :, : layer.length]) for layer in cache.layers]
    full = answer_log_prob(continuation_logits(tiny, ids, torch.cat([q, ans], 1))[-ans.shape[1]:], ans)
    assert masked_answer_log_probs(tiny, kv, None, q, ans)[0] == pytest.approx(full, abs=1e-4)
    pols = [candidate_policy(start_vector(recent=r), 0.3) for r in (0.1, 0.5)]
    for pol in pols:
        pol.min_keep = 0
    masks = torch.stack([replay_keep(p, surprisal, n_up=192) for p in pols])
    batched = masked_answer_log_probs(tiny, kv, masks, q, ans)
    for pol, got in zip(pols, batched):
        evicted = continuation_logits(tiny, ids, torch.cat([q, ans], 1), policy=pol, n_up=192)
        assert got == pytest.approx(answer_log_prob(evicted[-ans.shape[1]:], ans), abs=1e-4)
    assert batched[0] != pytest.approx(batched[1], abs=1e-6)  # the masks differ, so do the scores
    assert np.isfinite(batched).all()


def test_checkpoint_profiles_pick_settings_by_budget(tmp_path):
    base = NammPolicy(budget=0.28, threshold=False, sinks=4, recent=0.25, surprise=1.0, surprise_pool=65)
    path = tmp_path / "p.pt"
    base.save(path, profiles=[{"from_budget": 0.4, "surprise_mix": {"mean:33": 1.0, "max:9": 0.5}, "recent": 0.15}])
    low = NammPolicy.from_checkpoint(path)  # the checkpoint's own budget, 0.28
    assert (low.surprise_mix, low.recent) == ({"max:65": 1.0}, 0.25)
    high = NammPolicy.from_checkpoint(path, budget=0.5)
    assert (high.surprise_mix, high.recent, high.budget) == ({"mean:33": 1.0, "max:9": 0.5}, 0.15, 0.5)
    assert NammPolicy.from_checkpoint(path, budget=2048).recent == 0.25  # a token budget: the base
    tuned = NammPolicy.variant(path, {"recent": "0.3"}, budget=0.5)  # an explicit override wins
    assert (tuned.recent, tuned.surprise_mix) == (0.3, {"mean:33": 1.0, "max:9": 0.5})


def test_a_run_resumes_from_its_state_file(tmp_path):
    from cmaes import CMA

    from namm.evolution.optimizer import append_log_row, checkpoint_optimizer, resume_or_start, save_run_state

    state, log = tmp_path / "state.pt", tmp_path / "log.csv"
    opt, gen = resume_or_start(state, lambda: CMA(mean=np.zeros(3), sigma=0.3, seed=1, population_size=4),
                               log_path=log)
    assert gen == 0
    xs = [opt.ask() for _ in range(4)]
    opt.tell([(x, float((x ** 2).sum())) for x in xs])
    append_log_row(log, {"generation": 1, "best": 0.5})
    blob, opt = checkpoint_optimizer(opt)
    save_run_state(state, {"optimizer": blob, "generation": 1})
    # killed after generation 2's log row, before its state: the row is cut on resume
    append_log_row(log, {"generation": 2, "best": 0.6})
    again, gen = resume_or_start(state, lambda: pytest.fail("a state file exists"), log=lambda _: None,
                                 log_path=log)
    assert gen == 1
    np.testing.assert_array_equal(again.mean, opt.mean)
    np.testing.assert_array_equal(again.ask(), opt.ask())  # the same random stream after the resume
    assert log.read_text().splitlines() == ["generation,best", "1,0.5"]


def test_a_follow_up_run_starts_from_the_mean_of_a_previous_one(tmp_path):
    from cmaes import CMA

    from namm.evolution.optimizer import dump_optimizer
    from namm.evolution.surprisal_search import state_mean

    opt = CMA(mean=start_vector(), sigma=0.3, seed=2, population_size=4)
    xs = [opt.ask() for _ in range(4)]
    opt.tell([(x, float(((x - 1) ** 2).sum())) for x in xs])
    torch.save({"optimizer": dump_optimizer(opt), "generation": 1}, tmp_path / "state.pt")
    mean = state_mean(tmp_path / "state.pt")
    assert np.allclose(mean, opt.mean) and not np.allclose(mean, start_vector())


@pytest.mark.parametrize("argv, message", [
    (["pool", "--shard", "x"], "want i/k"),
    (["pool", "--shard", "2/2"], "want i/k"),
    (["retention", "--mixes", "[{"], "Expecting"),
    (["retention", "--mixes", '[{"max:4": 1}]'], "odd width"),
    (["evolve", "--budgets", "half"], "could not convert"),
])
def test_bad_arguments_are_usage_errors_before_the_model_loads(argv, message, capsys):
    from namm.evolution.surprisal_search import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
