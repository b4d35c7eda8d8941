"""Decoding defaults and fixed task wording on the real default model (short prompts)."""
import pytest

import namm
from namm.decoding import Decoding
from namm.tasks import make_sample, score_answer

# train passkey prompts (512 tokens) on which the old question "What is the pass key?" made
# plain greedy decoding loop: #5 answers "The pass key is the pass key." four times
LOOPING = [2, 5]


def _answer(lm, sample, question=None, decoding=None, max_new_tokens=32):
    return namm.generate(lm, sample.context, [question or sample.question], policy="full",
                         max_new_tokens=max_new_tokens, decoding=decoding).text


def test_default_decoding_stops_a_real_loop_and_keeps_one_copy(lm):
    s = make_sample("passkey", 512, "train", 5)
    plain = _answer(lm, s, "What is the pass key?", Decoding.plain())
    assert plain.count("The pass key is the pass key.") >= 3
    assert _answer(lm, s, "What is the pass key?") == "The pass key is the pass key."


@pytest.mark.parametrize("index", LOOPING)
def test_the_fixed_passkey_question_is_answered_and_defaults_change_nothing(lm, index):
    s = make_sample("passkey", 512, "train", index)
    text = _answer(lm, s)
    assert score_answer(text, s.answers, s.metric) == 1.0
    assert text == _answer(lm, s, decoding=Decoding.plain())


@pytest.mark.parametrize("policy", ["full", "surprisal"])
def test_the_demo_question_is_answered_with_the_full_cache_and_the_shipped_memory(lm, policy):
    from service.dev.demo import SAMPLE_ANSWER, SAMPLE_QUESTION, sample_document

    res = namm.generate(lm, sample_document(), [SAMPLE_QUESTION], policy=policy, max_new_tokens=48)
    assert SAMPLE_ANSWER in res.text
    if policy == "surprisal":  # at its default budget, with the question on top
        assert res.stats.kv_kept_fraction < 0.31


def test_a_real_summary_that_repeats_its_sentences_stops_at_the_first_repeat(lm):
    """The first 2,048 tokens of Python's textwrap.py, summarised from a full-cache memory: plain
    greedy decoding (and the loop stop alone) says the same sentence again, re-wrapped on other
    line ends; the default stops before it, and keeps a prefix of the plain summary."""
    from namm.decoding import repeated_units, token_words
    from namm.tasks.sources import stdlib_dir

    source = open(f"{stdlib_dir()}/textwrap.py", encoding="utf-8").read()
    text = lm.tokenizer.decode(lm.tokenizer.encode(source, add_special_tokens=False)[:2048])
    memory = namm.read_document(lm, text, policy="full")
    words = token_words(lm.tokenizer)

    def summary(decoding):
        answer = namm.ask(lm, memory, max_new_tokens=120, decoding=decoding).answers[0]
        return answer, repeated_units(lm.tokenizer.encode(answer, add_special_tokens=False), 4, words)

    loop_only, loop_only_repeats = summary(Decoding(stop_on_repeat=0))
    guarded, guarded_repeats = summary(None)
    assert len(loop_only_repeats) >= 1, loop_only
    assert guarded_repeats == [] and guarded and loop_only.startswith(guarded)
    assert len(guarded) < len(loop_only)
