"""The surprisal channel on a small random Llama 3: the surprisal the cache records is the
model's own -log p of each token, deferred updates keep exactly what in-forward updates keep,
NAMM's pooled surprisal reads the right positions, and snapshots forget later tokens."""
import pytest
import torch

from namm.generate import prefill
from namm.memory import NammCache
from namm.policies import make_policy
from namm.policies.base import UpdateContext
from namm.policies.namm import NammPolicy

from exactness import RecordingPolicy
from tiny_llama import random_ids, tiny_llama3

N_UP = 32


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=2)


class SurprisalRecency(RecordingPolicy):
    """Recency that asks for surprisal (so the cache defers its updates) but does not use it."""
    needs_surprisal = True


def test_recorded_surprisal_is_the_models_negative_log_likelihood(tiny):
    ids = random_ids(3 * N_UP + 7)
    cache = NammCache(tiny.model.config, SurprisalRecency(make_policy("recency", 10_000)), n_up=N_UP)  # evicts nothing
    assert cache.wants_logits
    with torch.no_grad():
        prefill(tiny, cache, ids)
        logp = torch.log_softmax(tiny.model(input_ids=ids).logits[0].float(), -1)
    expected = -logp[:-1].gather(1, ids[0, 1:, None])[:, 0]
    assert cache.signal("surprisal").values.shape == ids.shape
    assert cache.signal("surprisal").values[0, 0] == 0  # nothing came before the first token
    torch.testing.assert_close(cache.signal("surprisal").values[0, 1:], expected, atol=1e-4, rtol=1e-4)


def test_deferred_updates_keep_what_in_forward_updates_keep(tiny):
    ids = random_ids(5 * N_UP + 3, seed=1)
    plain = RecordingPolicy(make_policy("h2o", 40))
    deferred = SurprisalRecency(make_policy("h2o", 40))
    for pol in (plain, deferred):
        cache = NammCache(tiny.model.config, pol, n_up=N_UP)
        with torch.no_grad():
            prefill(tiny, cache, ids)
        assert cache.defer_updates is (pol is deferred)
    assert len(plain.kept_positions) == 5
    assert deferred.kept_positions == plain.kept_positions


def test_pooled_surprisal_takes_the_max_around_each_slot():
    pol = NammPolicy(budget=0.5, threshold=False, surprise=1.0, surprise_pool=3)
    sur = torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0, 2.0, 0.0]])
    positions = torch.tensor([[[0, 2, 3, 6], [1, 4, 5, 6]]])
    ctx = UpdateContext(layer_idx=0, keys=None, values=None, positions=positions,
                        valid=torch.ones_like(positions, dtype=torch.bool), seen=21, n_new=21, surprisal=sur)
    assert pol.pooled_surprisal(ctx).tolist() == [[[5.0, 5.0, 0.0, 2.0], [5.0, 2.0, 2.0, 2.0]]]
    assert NammPolicy(budget=0.5, threshold=False).needs_surprisal is False
    with pytest.raises(ValueError):
        NammPolicy(budget=0.5, threshold=False, surprise=1.0, surprise_pool=4)


def test_restore_forgets_the_surprisal_of_tokens_read_after_the_snapshot(tiny):
    pol = NammPolicy(budget=0.5, threshold=False, sinks=2, recent=0.5, surprise=1.0, surprise_pool=5)
    cache = NammCache(tiny.model.config, pol, n_up=N_UP)
    with torch.no_grad():
        prefill(tiny, cache, random_ids(2 * N_UP, seed=2))
        snap = cache.snapshot()
        prefill(tiny, cache, random_ids(N_UP + 5, seed=3))
    assert cache.signal("surprisal").values.shape[1] == 3 * N_UP + 5 and cache.n_updates >= 3
    cache.restore(snap)
    assert cache.signal("surprisal").values.shape[1] == 2 * N_UP == cache.tokens_read()


def test_an_idle_scorer_skips_the_attention_and_keeps_the_same_tokens(tiny):
    ids = random_ids(4 * N_UP + 9, seed=4)
    kept = []
    for skip in (True, False):
        pol = NammPolicy(budget=0.4, threshold=False, sinks=2, recent=0.25, surprise=1.0, surprise_pool=5)
        assert pol.needs_attention is False
        if not skip:  # the full path: window attention, spectrogram and a scorer that outputs 0
            pol.needs_attention = True
        rec = RecordingPolicy(pol)
        rec.needs_surprisal = True
        with torch.no_grad():
            prefill(tiny, NammCache(tiny.model.config, rec, n_up=N_UP), ids)
        kept.append(rec.kept_positions)
    assert len(kept[0]) == 4 and kept[0] == kept[1]
    # only the surprisal channel lets the scorer idle: without it NAMM needs its features
    assert NammPolicy(budget=0.4, threshold=False, surprise=1.0).needs_attention is False
    assert NammPolicy(budget=0.4, threshold=False).needs_attention is True


def test_a_variant_checkpoint_round_trips(tmp_path):
    from namm.checkpoints import default_checkpoint
    from namm.evolution.tools import main as tools

    def write_variant(args):
        return tools(["variant", *args])

    out = tmp_path / "v.pt"
    write_variant(["--base", str(default_checkpoint(None)), "--set",
                   "namm:scorer=zero:surprise=1:recent=0.25:surprise_pool=21", "--out", str(out)])
    pol = NammPolicy.from_checkpoint(out)
    assert (pol.recent, pol.surprise, pol.surprise_pool) == (0.25, 1.0, 21)
    assert not pol.params.any() and pol.needs_attention is False
    assert torch.load(out, weights_only=False)["training"]["variant"].startswith("namm:scorer=zero")
    with pytest.raises(SystemExit, match="unknown NAMM setting"):
        write_variant(["--base", str(out), "--set", "namm:colour=blue", "--out", str(out)])


def test_a_caller_that_never_hands_over_logits_still_gets_a_bounded_cache(tiny):
    pol = NammPolicy(budget=0.25, threshold=False, sinks=2, recent=0.25, surprise=1.0, surprise_pool=5)
    cache = NammCache(tiny.model.config, pol, n_up=N_UP)
    ids = random_ids(8 * N_UP, seed=5)
    with torch.no_grad():
        for start in range(0, ids.shape[1], N_UP):  # plain forwards, no after_forward
            tiny.model(input_ids=ids[:, start:start + N_UP], past_key_values=cache, use_cache=True)
    assert cache.n_updates > 0 and cache.signal("surprisal").values is None
    assert max(cache.kept_per_layer()) <= 0.25 * 8 * N_UP + 2 * N_UP


def test_min_keep_leaves_a_short_text_whole_and_the_pool_narrows_on_it(tiny):
    ids = random_ids(N_UP // 2, seed=6)  # shorter than one update interval: only the flush evicts
    for min_keep, whole in ((0, False), (N_UP, True)):
        pol = NammPolicy(budget=0.25, threshold=False, sinks=2, recent=0.25, surprise=1.0,
                         surprise_pool=65, min_keep=min_keep)
        cache = NammCache(tiny.model.config, pol, n_up=N_UP)
        with torch.no_grad():
            prefill(tiny, cache, ids)
        cache.flush()
        assert (cache.kept_fraction() == 1.0) is whole
    # 16 tokens read: a 65-wide window would give every slot the same value; it is 1 wide here
    sur = torch.arange(16.0)[None]
    positions = torch.arange(16)[None, None]
    ctx = UpdateContext(layer_idx=0, keys=None, values=None, positions=positions,
                        valid=torch.ones_like(positions, dtype=torch.bool), seen=16, n_new=16, surprisal=sur)
    assert pol.pooled_surprisal(ctx)[0, 0].tolist() == sur[0].tolist()


class _Pieces:
    """A stand-in vocabulary (only `decode` and `len` are read): the rule under test is on text."""
    pieces = [" The", " number", " is", ":", " ", "1", "8", "6", "\n", "AUD", "_", "SIZE", "-", "pill", "ow"]

    def __len__(self):
        return len(self.pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_words_begin_at_whitespace_or_punctuation_and_sum_their_pieces():
    from namm.surprisal import word_start_table, word_sums

    table = word_start_table(_Pieces())
    begins = [p for p, b in zip(_Pieces.pieces, table.tolist()) if b]
    assert begins == [" The", " number", " is", ":", " ", "\n", "-"]  # digits, letters and '_' continue
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]])  # " The number is: 186\nAUD_SIZE"
    sur = torch.tensor([[1.0, 2.0, 0.5, 0.5, 0.1, 2.3, 2.3, 2.3, 0.2, 4.0, 1.0, 3.0]])
    sums = word_sums(sur, ids, table)
    # the number is one word " 186" (the space and three digits), the identifier "\nAUD_SIZE" another
    torch.testing.assert_close(sums[0, 4:8], torch.full((4,), 7.0))
    torch.testing.assert_close(sums[0, 8:], torch.full((4,), 8.2))
    torch.testing.assert_close(sums[0, :4], sur[0, :4])


def test_a_word_view_scores_a_number_by_its_whole_information():
    table = torch.tensor([True, True, True, True, True, False, False, False])
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])   # four one-token words, then a four-token number
    sur = torch.tensor([[3.0, 3.0, 3.0, 3.0, 0.3, 2.3, 2.3, 2.3]])
    positions = torch.arange(8)[None, None]
    ctx = UpdateContext(layer_idx=0, keys=None, values=None, positions=positions,
                        valid=torch.ones_like(positions, dtype=torch.bool), seen=56, n_new=56,
                        surprisal=sur, token_ids=ids)
    per_token = NammPolicy(budget=0.5, threshold=False, surprise_mix={"max:1": 1.0}).pooled_surprisal(ctx)
    per_word = NammPolicy(budget=0.5, threshold=False, surprise_mix={"word:1": 1.0},
                          word_starts=table).pooled_surprisal(ctx)
    assert per_token[0, 0, 5:].max() < per_token[0, 0, :4].min()   # token by token the digits lose
    assert per_word[0, 0, 4:].min() > per_word[0, 0, :4].max()     # as one word (7.2 nats) they win
    with pytest.raises(ValueError, match="word_starts"):
        NammPolicy(budget=0.5, threshold=False, surprise_mix={"word:9": 1.0})


def test_closing_fills_a_dip_inside_a_phrase_but_does_not_widen_it():
    from namm.surprisal import close_spans

    score = torch.tensor([[0.0, 0.0, 5.0, 1.0, 5.0, 0.0, 0.0, 0.0]])
    closed = close_spans(score, 3)
    assert closed.tolist() == [[0.0, 0.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0]]
    assert close_spans(score, 1) is score
    with pytest.raises(ValueError, match="surprise_close"):
        NammPolicy(budget=0.5, threshold=False, surprise=1.0, surprise_close=4)


def test_the_cache_hands_the_token_ids_with_the_surprisal_and_forgets_them_on_restore(tiny):
    table = torch.zeros(tiny.model.config.vocab_size, dtype=torch.bool)
    table[::3] = True
    pol = NammPolicy(budget=0.5, threshold=False, sinks=2, recent=0.25, surprise_mix={"word:5": 1.0},
                     word_starts=table)
    rec = RecordingPolicy(pol)
    rec.needs_surprisal = True
    cache = NammCache(tiny.model.config, rec, n_up=N_UP)
    ids = random_ids(3 * N_UP, seed=7)
    with torch.no_grad():
        prefill(tiny, cache, ids[:, : 2 * N_UP])
        snap = cache.snapshot()
        prefill(tiny, cache, ids[:, 2 * N_UP:])
    assert torch.equal(cache.signal("surprisal").ids, ids) and len(rec.kept_positions) >= 2
    cache.restore(snap)
    assert torch.equal(cache.signal("surprisal").ids, ids[:, : 2 * N_UP])


def test_a_word_profile_is_stored_with_its_table_and_falls_back_on_another_model(tmp_path):
    from namm.checkpoints import default_checkpoint
    from namm.evolution.tools import set_profile

    base = {**torch.load(default_checkpoint(None), weights_only=False), "surprise_mix": {"max:65": 1.0}}
    table = torch.zeros(16, dtype=torch.bool)
    ck = set_profile(base, 0.45, {"word:33": 1.0, "max:9": 0.5}, 0.2, table, "SmolLM2-135M-Instruct")
    assert [p["from_budget"] for p in ck["profiles"]][-1] == 0.45
    path = tmp_path / "w.pt"
    torch.save(ck, path)
    here = NammPolicy.from_checkpoint(path, budget=0.5, model_name="SmolLM2-135M-Instruct")
    assert here.surprise_mix == {"word:33": 1.0, "max:9": 0.5} and here.recent == 0.2
    assert torch.equal(here.word_starts, table) and here.word_starts_model == "SmolLM2-135M-Instruct"
    # the table is the default model's vocabulary: elsewhere the word view becomes its token view
    other = NammPolicy.from_checkpoint(path, budget=0.5, model_name="Llama-3-8b")
    assert other.surprise_mix == {"max:33": 1.0, "max:9": 0.5}
    below = NammPolicy.from_checkpoint(path, budget=0.3)  # under the profile: the base channel
    assert below.surprise_mix == {"max:65": 1.0}
    based = set_profile(ck, None, {"word:65": 1.0}, 0.3, table, "SmolLM2-135M-Instruct")
    torch.save(based, path)
    assert NammPolicy.from_checkpoint(path, budget=0.3).surprise_mix == {"word:65": 1.0}
    assert NammPolicy.from_checkpoint(path, budget=0.5).surprise_mix == {"word:33": 1.0, "max:9": 0.5}


@pytest.mark.parametrize("argv, message", [
    (["--mix", "{not json"], "--mix is not JSON"),
    (["--mix", "[1]"], "JSON object"),
    (["--mix", '{"word:32": 1}'], "odd width"),
    (["--mix", '{"max:9": 1}', "--from-budget", "1.5"], "kept fraction"),
    (["--mix", '{"max:9": 1}'], "no such checkpoint file"),
])
def test_bad_profile_arguments_are_clear_errors(argv, message, tmp_path):
    from namm.evolution.tools import main

    args = ["profile", "--base", "unused.pt", "--out", str(tmp_path / "o.pt"), "--from-budget", "0.4"] + argv
    with pytest.raises(SystemExit, match=message):
        main(args)
