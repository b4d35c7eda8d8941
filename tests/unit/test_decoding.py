"""Greedy decoding's guards against loops (namm.decoding), on a scripted stand-in model."""
from types import SimpleNamespace

import pytest
import torch

from namm.decoding import DEFAULT_DECODING, Decoding, loop_cut, next_token
from namm.generate import greedy_decode

V = 64


class ScriptedLM:
    """A stand-in for LoadedModel whose next token is ``script(answer so far)``, with a runner-up
    token ``second`` one logit below: a penalty can flip the choice, greedy never does."""

    device = "cpu"

    def __init__(self, script, second=lambda out: 0):
        self.script, self.second, self.out = script, second, []
        self.model = self._forward

    def logits(self):
        row = torch.zeros(1, V)
        row[0, self.second(self.out)] = 4.0
        row[0, self.script(self.out)] = 5.0
        return row

    def _forward(self, input_ids, past_key_values=None, use_cache=True):
        self.out.append(int(input_ids[0, -1]))
        return SimpleNamespace(logits=self.logits()[:, None, :])


def decode(script, decoding, max_new_tokens=60, stop=frozenset({1}), second=lambda out: 0):
    lm = ScriptedLM(script, second)
    return greedy_decode(lm, None, lm.logits(), max_new_tokens, set(stop), decoding)


def first_cut(tokens, min_tokens):
    """What the decoder does: check after every token, stop at the first loop."""
    for n in range(1, len(tokens) + 1):
        cut = loop_cut(tokens[:n], min_tokens)
        if cut is not None:
            return n, cut
    return None


SENTENCE = list(range(10, 26))  # a 16-token sentence, e.g. "You should use the GNU Lesser ..."


def test_a_repeated_sentence_is_cut_to_one_copy_after_its_second_copy():
    tokens = [2, 3] + SENTENCE * 8
    assert first_cut(tokens, 12) == (2 + 32, 2 + 16)


def test_a_short_loop_is_cut_once_it_covers_the_minimum():
    tokens = [5, 6, 7, 8] + [6, 7, 8] * 10  # "a company called the company called the ..."
    seen, cut = first_cut(tokens, 12)
    assert seen == 1 + 12 and tokens[:cut] == [5, 6, 7, 8]


def test_a_loop_whose_first_word_changed_form_is_cut_before_the_repeat():
    # "The pass key is the pass key. The pass key is ..." where "The" opening the answer and
    # " The" opening each repeat are two tokens of one word
    the, the_spaced = 30, 31
    twins = lambda a, b: {a, b} == {the, the_spaced}  # noqa: E731
    unit = [40, 41, 42, 43, 44, 45, 46]
    tokens = [the] + unit + ([the_spaced] + unit) * 3
    assert first_cut(tokens, 12) == (1 + 7 + 8 + 1, 1 + 7 + 1)  # caught one token late: " The"
    n, _ = first_cut(tokens, 12)
    assert loop_cut(tokens[:n], 12, twins) == 1 + 7  # "The pass key is the pass key."


def test_word_twins_compare_decoded_words():
    from namm.decoding import word_twins

    class Tok:
        def decode(self, ids):
            return {1: "The", 2: " The", 3: " the", 4: " cat", 5: " "}[ids[0]]

    twins = word_twins(Tok())
    assert twins(1, 2) and twins(2, 3) and not twins(1, 4) and not twins(5, 5) and not twins(2, 2)
    assert word_twins(None) is None


@pytest.mark.parametrize("tokens", [
    [3, 4, 7, 7, 4, 6, 2],  # a number with repeated digits: "The pass key is 67746."
    [9, 9, 9, 9, 9, 9],  # fewer repeats than the minimum
    [40, 41, 42, 43, 44, 45, 1, 2, 40, 41, 42, 43, 44, 45, 3, 4, 40, 41, 42, 43, 44, 45, 5, 6],
])  # the same phrase before different values (multi-value answers) is no loop
def test_legitimate_repeats_are_not_loops(tokens):
    assert first_cut(tokens, 12) is None


def test_off_means_off():
    assert loop_cut(SENTENCE * 4, 0) is None
    assert Decoding.plain().processors() == [] and len(DEFAULT_DECODING.processors()) <= 2


def test_greedy_decode_stops_a_loop_and_keeps_one_copy():
    cycle = [20, 21, 22, 23, 24, 25, 26]
    script = lambda out: 30 if not out else cycle[(len(out) - 1) % len(cycle)]  # noqa: E731
    looped = decode(script, Decoding.plain())
    assert len(looped) == 60
    stopped = decode(script, Decoding(stop_on_loop=12))
    assert stopped == [30] + cycle


def test_defaults_leave_a_short_correct_answer_alone():
    answer = [40, 41, 42, 6, 7, 7, 4, 6, 43]  # "The pass key is 67746." then the stop token
    script = lambda out: answer[len(out)] if len(out) < len(answer) else 1  # noqa: E731
    assert decode(script, DEFAULT_DECODING) == decode(script, Decoding.plain()) == answer


def test_penalties_see_the_answer_only():
    # the first token may be anything from the prompt: nothing is penalised yet
    logits = torch.zeros(1, V)
    logits[0, 7] = 5.0
    assert next_token(logits, [], Decoding(repetition_penalty=3.0).processors()) == 7
    # once 7 is in the answer, a strong penalty moves greedy to the runner-up
    logits[0, 8] = 4.0
    assert next_token(logits, [7], Decoding(repetition_penalty=3.0).processors()) == 8
    assert next_token(logits, [7], Decoding.plain().processors()) == 7


def test_no_repeat_ngrams_break_a_loop_in_the_answer():
    script = lambda out: [20, 21, 22][len(out) % 3]  # noqa: E731
    second = lambda out: 50 + len(out) % 10  # noqa: E731
    out = decode(script, Decoding(no_repeat_ngram_size=3, stop_on_loop=0), max_new_tokens=12, second=second)
    grams = [tuple(out[i:i + 3]) for i in range(len(out) - 2)]
    assert len(grams) == len(set(grams))


@pytest.mark.parametrize("bad", [dict(repetition_penalty=0.0), dict(no_repeat_ngram_size=-1),
                                 dict(stop_on_loop=-2)])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        Decoding(**bad)
