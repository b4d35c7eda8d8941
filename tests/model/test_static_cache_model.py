"""The static-capacity cache (issue 22 item 1) on the real default model: for every evicting
policy, a document read with storage allocated once and compacted in place keeps the same
tokens, keys and values as the reallocating cache, and answers token-identically (greedy)."""
import pytest

import namm
from namm.tasks import make_sample

from static_cache_checks import check_same_memory, read_both

pytestmark = pytest.mark.model

EVICTING = ["surprisal", "recency", "streaming_llm", "h2o", "l2norm", "snapkv", "tova", "random"]


@pytest.mark.parametrize("policy", EVICTING)
def test_static_storage_answers_as_the_reallocating_cache_on_the_real_model(lm, monkeypatch, policy):
    sample = make_sample("passkey", 900, "test", 3)
    static, dynamic, allocations = read_both(lm, monkeypatch, sample.context, policy, 0.3, 128)
    check_same_memory(static, dynamic, allocations)
    questions = [sample.question, "What is the document about?"]
    a = namm.ask(lm, static, questions, max_new_tokens=16)
    b = namm.ask(lm, dynamic, questions, max_new_tokens=16)
    assert a.answers == b.answers
    assert a.stats.kv_updates == b.stats.kv_updates
