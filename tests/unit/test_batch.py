"""Batched generation (namm/batch.py) on a small random Llama 3: every request's answers and
figures equal namm.generate's one at a time, the batch really batches (rows join and leave),
and one request's error fails that request only."""
import pytest
import torch

import namm
from namm import batch as batch_mod
from namm.batch import generate_batch
from namm.batched_step import PackedLinears, RowsCache
from namm.errors import ContextTooLongError, EmptyInputError, RequestError
from namm.memory import NammCache
from namm.policies import make_policy
from namm.policies.streaming_llm import StreamingLLM
from namm.prompts import split_prompt
from namm.spec import GenerationRequest

from tiny_llama import tiny_llama3

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _text(n_words: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n_words,), generator=g))


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=2)


STAT_FIELDS = ("tokens_in", "tokens_out", "kv_kept_per_layer", "kv_kept_fraction", "kv_bytes_peak",
               "kv_bytes_full_peak", "kv_bytes_allocated_peak", "kv_token_steps", "kv_token_steps_full",
               "kv_updates", "policy_updates", "truncated")


def _same_as_generate(lm, request, outcome, **kwargs):
    assert not isinstance(outcome, Exception), outcome
    ref = namm.generate(lm, request, **kwargs)
    assert outcome.answers == ref.answers
    assert (outcome.policy, outcome.budget) == (ref.policy, ref.budget)
    for name in STAT_FIELDS:
        assert getattr(outcome.stats, name) == getattr(ref.stats, name), name


def _count_steps(monkeypatch):
    """Record the caches of every batched decoding step."""
    steps = []
    real = batch_mod.batched_step

    def spy(lm, caches, tokens, linears=None):
        logits, failed = real(lm, caches, tokens, linears)
        steps.append(([id(c) for c in caches], dict(failed)))
        return logits, failed

    monkeypatch.setattr(batch_mod, "batched_step", spy)
    return steps


def _requests():
    specs = [("full", 60, None), ("streaming_llm", 160, 0.3), ("snapkv", 120, 0.4), ("h2o", 100, 0.3),
             ("tova", 50, 0.5), ("random", 90, 0.3), ("recency", 140, 0.25), ("l2norm", 70, 0.4)]
    return [GenerationRequest(context=_text(n, i), questions=(f"what about {WORDS[i]}?", "and then?"),
                              policy=p, budget=b, max_new_tokens=12 + 3 * i, n_up=16)
            for i, (p, n, b) in enumerate(specs)]


def test_every_answer_and_figure_equals_generate_one_at_a_time(tiny, monkeypatch):
    requests = _requests()
    steps = _count_steps(monkeypatch)
    done, report = [], {}
    out = generate_batch(tiny, requests, max_batch=4, read_ahead=2, on_result=lambda i, o: done.append(i),
                         report=report)
    assert len(out) == len(requests) and sorted(done) == list(range(len(requests)))
    for request, outcome in zip(requests, out):
        _same_as_generate(tiny, request, outcome)
        assert outcome.stats.tokens_out > 0
    # batched: up to max_batch rows per step, and the rows change as answers end and others join
    sizes = [len(s) for s, _ in steps]
    assert max(sizes) == 4 and min(sizes) >= 1
    assert len({tuple(s) for s, _ in steps}) > 3
    total_rows = sum(o.stats.tokens_out for o in out) - 2 * len(out)  # each answer's first token needs no step
    assert sum(sizes) >= total_rows
    assert (report["decode_steps"], report["decode_rows"]) == (len(steps), sum(sizes))
    assert report["read_chunks"] > len(requests) and report["decode_seconds"] > 0


def test_query_aware_reindexed_and_truncated_requests_equal_generate(tiny):
    requests = [
        GenerationRequest(context=_text(120, 1), questions=("one?", "two?"), policy="snapkv", budget=0.3,
                          max_new_tokens=12, n_up=16, query_aware=True),
        GenerationRequest(context=_text(1400, 2), questions=("long?",), policy="full", max_new_tokens=10,
                          n_up=512, truncate=True),
        GenerationRequest(context=_text(150, 3), questions=("where?",), policy="streaming_llm", budget=32,
                          max_new_tokens=16, n_up=16),
    ]
    out = generate_batch(tiny, requests, max_batch=3, positions="reindexed")
    for request, outcome in zip(requests, out):
        _same_as_generate(tiny, request, outcome, positions="reindexed")
    assert out[1].stats.truncated
    assert [o.stats.query_aware for o in out] == [True, False, False]  # each says how it read


class _FailsWhileDecoding(StreamingLLM):
    """Raises at its first update after `after` tokens read (inside a batched step)."""

    def __init__(self, after: int):
        super().__init__(budget=0.5)
        self.after = after

    def select(self, ctx):
        if ctx.seen > self.after:
            raise RuntimeError("policy broke while decoding")
        return super().select(ctx)


def test_bad_input_and_a_failing_row_fail_their_request_only(tiny, monkeypatch):
    good = _requests()[:3]
    doc = _text(60, 9)
    n_doc = len(tiny.tokenizer.encode(split_prompt(tiny.tokenizer, doc, "q?").context))
    failing = GenerationRequest(context=doc, questions=("q?",), policy=_FailsWhileDecoding(n_doc + 8),
                                max_new_tokens=60, n_up=16)
    requests = [good[0], {"context": "   ", "questions": ["x?"]}, good[1], failing,
                {"context": _text(1000, 4), "questions": ["y?"], "policy": "full", "max_new_tokens": 4000},
                {"context": "fine", "max_new_tokens": 0}, "not a request", good[2]]
    steps = _count_steps(monkeypatch)
    out = generate_batch(tiny, requests, max_batch=4)
    assert isinstance(out[1], EmptyInputError)
    assert isinstance(out[3], RuntimeError) and "while decoding" in str(out[3])
    assert isinstance(out[4], ContextTooLongError)
    assert isinstance(out[5], RequestError)
    assert isinstance(out[6], TypeError)
    for i in (0, 2, 7):
        _same_as_generate(tiny, requests[i], out[i])
    # the failing request failed in its row of a batched step, alongside other rows
    failing_steps = [(s, f) for s, f in steps if f]
    assert len(failing_steps) == 1
    rows, failed = failing_steps[0]
    assert len(rows) > 1 and len(failed) == 1 and isinstance(next(iter(failed.values())), RuntimeError)


def test_one_request_with_a_stop_at_the_first_token_and_max_batch_one(tiny):
    requests = _requests()[:3]
    out = generate_batch(tiny, requests, max_batch=1)
    for request, outcome in zip(requests, out):
        _same_as_generate(tiny, request, outcome)
    reqs = [GenerationRequest(context=_text(40, 5), questions=("q?",), policy="full", max_new_tokens=1, n_up=16)]
    (one,) = generate_batch(tiny, reqs)
    assert one.stats.tokens_out <= 1
    _same_as_generate(tiny, reqs[0], one)


def test_a_policy_object_given_twice_is_not_shared(tiny):
    pol = make_policy("random", 0.3)
    requests = [GenerationRequest(context=_text(100, s), questions=("a?",), policy=pol, max_new_tokens=8, n_up=16)
                for s in (11, 12)]
    out = generate_batch(tiny, requests, max_batch=2)
    for request, outcome in zip(requests, out):  # each equals a run with a fresh copy of the policy
        fresh = GenerationRequest(context=request.context, questions=request.questions, policy=make_policy("random", 0.3),
                                  max_new_tokens=8, n_up=16)
        _same_as_generate(tiny, fresh, outcome)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_max_batch_is_checked(bad):
    with pytest.raises(ValueError, match="max_batch"):
        generate_batch(None, [], max_batch=bad)


def test_read_ahead_and_positions_are_checked():
    with pytest.raises(ValueError, match="read_ahead"):
        generate_batch(None, [], read_ahead=-1)
    with pytest.raises(ValueError, match="positions"):
        generate_batch(None, [], positions="sideways")


def test_no_requests_no_outcomes(tiny):
    assert generate_batch(tiny, []) == []


@pytest.mark.parametrize("kind", ["mkldnn", "transposed"])
def test_packed_linears_compute_the_linear_and_are_undone(kind):
    if kind == "mkldnn" and not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        pytest.skip("no oneDNN")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8, bias=False))
    x = torch.randn(5, 1, 24)
    ref = model(x)
    packed = PackedLinears(model, rows=5, kind=kind)
    with torch.no_grad(), packed:
        assert all("forward" in m.__dict__ for m in model if isinstance(m, torch.nn.Linear))
        got = model(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert not any("forward" in m.__dict__ for m in model)
    assert len(packed.weights) == 2
    packed.release()
    assert packed.weights == {}
    with pytest.raises(ValueError, match="kind"):
        PackedLinears(model, kind="fast")


def test_rows_take_each_cache_s_own_position(tiny):
    caches = []
    for n in (5, 9):
        cache = NammCache(tiny.model.config, make_policy("full"), n_up=32)
        with torch.no_grad():
            tiny.model(input_ids=torch.arange(3, 3 + n)[None], past_key_values=cache, use_cache=True)
        caches.append(cache)
    rows = RowsCache(caches, len(caches[0].layers))
    assert rows.positions("cpu").tolist() == [[5], [9]]


def test_a_batched_step_gives_each_row_the_logits_of_its_own_step(tiny):
    """Three caches of different lengths and policies: one batched step == three one-row steps."""
    def read(n, policy, budget):
        cache = NammCache(tiny.model.config, make_policy(policy, budget), n_up=16)
        with torch.no_grad():
            for start in range(0, n, 16):
                ids = torch.arange(3 + start, 3 + min(n, start + 16))[None] % 250 + 3
                out = tiny.model(input_ids=ids, past_key_values=cache, use_cache=True)
                cache.after_forward(ids, out.logits)
        return cache

    specs = [(70, "full", None), (100, "h2o", 0.3), (45, "snapkv", 0.5)]
    alone = [read(*s) for s in specs]
    together = [read(*s) for s in specs]
    tokens = [7, 11, 13]
    ref = []
    with torch.no_grad():
        for cache, t in zip(alone, tokens):
            ref.append(tiny.model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True).logits[:, -1])
    logits, failed = batch_mod.batched_step(tiny, together, tokens)
    assert failed == {}
    torch.testing.assert_close(logits, torch.cat(ref), atol=1e-5, rtol=1e-5)
    for a, b in zip(alone, together):
        assert a.tokens_read() == b.tokens_read()
        for la, lb in zip(a.layers, b.layers):
            assert la.length == lb.length
            torch.testing.assert_close(la.keys[:, :, :la.length], lb.keys[:, :, :lb.length])
            assert torch.equal(la.positions[:, :, :la.length], lb.positions[:, :, :lb.length])
