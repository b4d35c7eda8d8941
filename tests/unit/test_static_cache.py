"""The static-capacity cache (issue 22 item 1) on a small random Llama 3: a budgeted memory's
storage is allocated once at `static_capacity` and compacted in place; kept tokens, keys,
values and answers equal the reallocating cache's, for every evicting policy, a fraction and a
token budget, re-indexed positions, and questions asked after reading (namm.ask copies)."""
import pytest

import namm
from namm.memory import static_capacity
from namm.policies import make_policy

from static_cache_checks import check_same_memory, read_both
from tiny_llama import tiny_llama3

N_UP = 32
DOC = " ".join(f"Item {i} of the ledger weighs {7 * i % 31} kilos and sits on shelf {i % 9}." for i in range(40))
QUESTIONS = ["Which shelf holds item 12?", "How heavy is item 3?"]
EVICTING = ["surprisal", "recency", "streaming_llm", "h2o", "l2norm", "snapkv", "tova", "random"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=2)


@pytest.mark.parametrize("policy", EVICTING)
@pytest.mark.parametrize("budget", [0.3, 96])
def test_static_storage_keeps_what_the_reallocating_cache_keeps(tiny, monkeypatch, policy, budget):
    static, dynamic, allocations = read_both(tiny, monkeypatch, DOC, policy, budget, N_UP)
    check_same_memory(static, dynamic, allocations)
    a = namm.ask(tiny, static, QUESTIONS, max_new_tokens=8)
    b = namm.ask(tiny, dynamic, QUESTIONS, max_new_tokens=8)
    assert a.answers == b.answers
    assert a.stats.kv_token_steps == b.stats.kv_token_steps and a.stats.kv_updates == b.stats.kv_updates


def test_reindexed_positions_compact_in_place_too(tiny, monkeypatch):
    static, dynamic, allocations = read_both(tiny, monkeypatch, DOC, "snapkv", 0.3, N_UP, positions="reindexed")
    check_same_memory(static, dynamic, allocations)
    assert namm.ask(tiny, static, QUESTIONS, max_new_tokens=8).answers == \
        namm.ask(tiny, dynamic, QUESTIONS, max_new_tokens=8).answers


def test_capacity_is_the_cap_plus_two_intervals_and_none_without_a_cap():
    assert static_capacity(make_policy("recency", 96), 1000, 64) == 96 + 128
    assert static_capacity(make_policy("recency", 0.25), 1000, 64) == 266 + 128  # ceil(0.25 x 1064)
    assert static_capacity(make_policy("recency", 5000), 1000, 64) == 1064 + 128  # never beyond the text
    assert static_capacity(make_policy("full"), 1000, 64) is None


def test_questions_fit_a_token_budget_and_a_long_one_grows_a_fraction_budget(tiny):
    """After a read ends off an update boundary, the next update finds up to 2 x n_up - 1 new
    slots: a token budget's memory holds any question in its capacity. A fraction budget's cap
    grows with the tokens read, so a question far longer than an interval grows the storage
    (counted), and the answers still come."""
    from namm.generate import prefill
    from namm.prompts import encode_text

    question = encode_text(tiny.tokenizer, "Which shelf holds item 12? " * 20)  # 540 tokens
    for budget, grows in ((40, False), (0.3, True)):
        memory = namm.read_document(tiny, DOC, policy="recency", budget=budget, n_up=N_UP)
        cache = memory.cache.copy()
        assert cache.capacity == memory.cache.capacity
        prefill(tiny, cache, question)
        assert (cache.regrowths > 0) == grows, budget
        assert (cache.layers[0].keys.shape[2] > cache.capacity) == grows
        assert all(layer.length <= layer.keys.shape[2] for layer in cache.layers)


def test_a_saved_static_memory_loads_static(tiny, tmp_path):
    memory = namm.read_document(tiny, DOC, policy="snapkv", budget=0.3, n_up=N_UP)
    loaded = namm.load_memory(tiny, namm.save_memory(memory, tmp_path / "m.mem", storage="float32"))
    assert loaded.cache.capacity == memory.cache.capacity
    assert namm.ask(tiny, loaded, QUESTIONS, max_new_tokens=8).answers == \
        namm.ask(tiny, memory, QUESTIONS, max_new_tokens=8).answers
