import pytest

from namm.tasks import contains, normalize, score_answer, token_f1
from namm.tasks.lengths import length_label, parse_length, parse_lengths


def test_normalize():
    assert normalize("  The Pass-Key:  ‘71432’!") == "the pass key 71432"
    assert normalize("self._value") == "self value"


def test_contains_respects_word_boundaries():
    assert contains("The special magic number is 1234567.", "1234567")
    assert not contains("12345678", "1234567")
    assert contains("It returns `self._value`.", "self._value")
    assert contains("Lisbon", "lisbon")
    assert not contains("anything", "")


def test_token_f1():
    assert token_f1("the cat sat", "cat sat") == 1.0
    assert token_f1("a dog", "cat") == 0.0
    assert token_f1("cat dog", "cat") == pytest.approx(2 / 3)


def test_score_answer_modes():
    assert score_answer("VAR ABCDE and FGHIJ", ["ABCDE", "FGHIJ", "KLMNO", "PQRST"], "contains_all") == 0.5
    assert score_answer("it is Oslo", ["Lisbon", "Oslo"], "contains") == 1.0
    assert score_answer("blue cat", ["cat", "the blue cat"], "f1") == 1.0
    with pytest.raises(ValueError):
        score_answer("x", ["x"], "lm")
    with pytest.raises(ValueError):
        score_answer("x", [], "contains")


def test_parse_lengths():
    assert parse_lengths("1k,2k, 1500") == [1024, 2048, 1500]
    assert parse_length("7.5k") == 7680
    assert length_label(2048) == "2k" and length_label(1500) == "1500"
    for bad in ("", "abc", "100", "1m", "100k"):
        with pytest.raises(ValueError):
            parse_length(bad)
