"""Greedy decoding's guards against loops (namm.decoding), on a scripted stand-in model."""
from types import SimpleNamespace

import pytest
import torch

from namm.decoding import DEFAULT_DECODING, Decoding, loop_cut, next_token, repeat_cut, repeated_units, token_words
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


class Tok:
    """Token ids to text: a stand-in tokenizer for TokenWords."""

    TEXT = {30: "The", 31: " The", 32: " the", 33: " ", 40: " pass", 41: " key", 42: " is", 46: ".",
            50: "\n", 51: "-", 52: " ", **{60 + d: str(d) for d in range(10)}}

    def decode(self, ids):
        return self.TEXT[ids[0]]


def test_a_loop_whose_first_word_changed_form_is_cut_before_the_repeat():
    # "The pass key is the pass key. The pass key is ...": "The" opening the answer and " The"
    # opening each repeat are two tokens of one word
    unit = [40, 41, 42, 32, 40, 41, 46]
    tokens = [30] + unit + ([31] + unit) * 3
    n, cut = first_cut(tokens, 12)
    assert (n, cut) == (1 + 7 + 8 + 1, 1 + 7 + 1)  # without words: caught one token late, " The" kept
    assert loop_cut(tokens[:n], 12, token_words(Tok())) == 1 + 7  # "The pass key is the pass key."


def test_a_repeated_list_item_is_cut_after_a_whole_item():
    # "- 1379422\n- 1787712\n- 1787712": the period read from the loop's start is "2\n- 178771"
    digits = lambda number: [60 + int(d) for d in number]  # noqa: E731
    item = lambda number: [51, 52] + digits(number) + [50]  # noqa: E731
    tokens = [30, 50] + item("1379422") + item("1787712") + item("1787712")
    n, cut = first_cut(tokens, 12)
    assert 60 <= tokens[cut - 1] < 70 and tokens[cut] != 50  # one period from its start: inside the number
    kept = tokens[:loop_cut(tokens[:n], 12, token_words(Tok()))]
    assert kept == [30, 50] + item("1379422") + item("1787712")


def test_token_words_compare_decoded_words():
    words = token_words(Tok())
    assert words.twins(30, 31) and words.twins(31, 32) and not words.twins(30, 40)
    assert not words.twins(33, 33) and not words.twins(31, 31)
    assert words.ends_unit(46) and words.ends_unit(50) and not words.ends_unit(41)
    assert token_words(None) is None


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


# --- a sentence or clause that comes back after others (stop_on_repeat) ---

class WordTokenizer:
    """A stand-in tokenizer: one token per word or punctuation mark, each with its text."""

    def __init__(self, text: str):
        import re

        self.pieces = re.findall(r" ?[\w-]+|[.,;:!?]|\n", text)
        self.vocab = {p: i for i, p in enumerate(dict.fromkeys(self.pieces), start=2)}
        self.text = {i: p for p, i in self.vocab.items()}

    def ids(self, text: str) -> list[int]:
        import re

        return [self.vocab[p] for p in re.findall(r" ?[\w-]+|[.,;:!?]|\n", text)]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.text.get(i, "") for i in ids)


SUMMARY = ("The licence is free. It adds a new version of FFI-C. You may copy it, change it, and share it. "
           "It adds a new version of FFI-C. Nothing else.")


def first_repeat_cut(tokens, words, min_words=4):
    for n in range(1, len(tokens) + 1):
        cut = repeat_cut(tokens[:n], min_words, words)
        if cut is not None:
            return n, cut
    return None


def test_a_sentence_repeated_after_another_stops_the_answer_before_the_repeat():
    tok = WordTokenizer(SUMMARY)
    words = token_words(tok)
    tokens = tok.ids(SUMMARY)
    seen, cut = first_repeat_cut(tokens, words)
    assert tok.decode(tokens[:cut]) == ("The licence is free. It adds a new version of FFI-C. "
                                        "You may copy it, change it, and share it.")
    assert tok.decode(tokens[:seen]).endswith("share it. It adds a new version of FFI-C.")  # caught at its end
    assert [tok.decode(tokens[u.start:u.end]) for u in repeated_units(tokens, 4, words)] == [" It adds a new version of FFI-C."]


@pytest.mark.parametrize("text, kept", [
    # a clause in another case and punctuation; the clause leading into it goes with it
    ("It adds a new version of FFI-C, which is fast. Then, it adds a new version of FFI-C; again.",
     "It adds a new version of FFI-C, which is fast."),
    # the repeat's first clause is too short to count alone: it goes too
    ("The man, who was hired last week, is tall.\nThe man, who was hired last week, is tall.",
     "The man, who was hired last week, is tall."),
    # prose wrapped like a PDF: a line end inside a sentence is a space
    ("The files are used to generate\nthe mime file. They are read first. The files are\nused to generate the mime file.",
     "The files are used to generate\nthe mime file. They are read first."),
    # list items end at their line end
    ("Steps:\n- copy the source files here\n- build it\n- copy the source files here\n",
     "Steps:\n- copy the source files here\n- build it\n"),
])
def test_repeated_clauses_lines_and_wrapped_sentences_are_cut(text, kept):
    tok = WordTokenizer(text)
    tokens = tok.ids(text)
    _, cut = first_repeat_cut(tokens, token_words(tok))
    assert tok.decode(tokens[:cut]) == kept


@pytest.mark.parametrize("text", [
    "The special magic numbers are 1186905, 1186905, 22 and 1186905.",  # short units: values
    "- yes.\n- no.\n- yes.\n- yes.\n",  # list items under the minimum
    "The pass key is 67746. The pass key is 67745.",  # one word differs
    "The function returns the value of x",  # an unfinished unit is never checked
    "Version 3.14 of the tool. Version 3.15 of the tool.",  # a decimal point ends nothing
    "It uses the first value, then the second value, then the third value.",
])
def test_short_or_different_units_never_stop_an_answer(text):
    tok = WordTokenizer(text)
    assert first_repeat_cut(tok.ids(text), token_words(tok)) is None


def test_greedy_decode_stops_before_a_repeated_sentence_and_plain_decoding_does_not():
    tok = WordTokenizer(SUMMARY)
    answer = tok.ids(SUMMARY)

    class Scripted(ScriptedLM):
        tokenizer = tok

    def run(decoding):
        lm = Scripted(lambda out: answer[len(out)] if len(out) < len(answer) else 1)
        return greedy_decode(lm, None, lm.logits(), 60, {1}, decoding)

    plain, guarded = run(Decoding.plain()), run(DEFAULT_DECODING)
    assert plain == answer
    assert guarded == answer[:len(guarded)] and tok.decode(guarded).endswith("and share it.")
    assert run(Decoding(stop_on_repeat=0)) == answer  # off means off
    assert run(Decoding(stop_on_repeat=20)) == answer  # the repeat has 7 words


def test_plain_has_no_repeat_stop_and_a_negative_minimum_is_refused():
    assert Decoding.plain().stop_on_repeat == 0 and not Decoding.plain().needs_words
    with pytest.raises(ValueError, match="stop_on_repeat"):
        Decoding(stop_on_repeat=-1)
