"""The token classes bench/task_behaviour.py sums the retention map by (issue 21, item 4)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from task_behaviour import code_kinds, piece_kinds, prose_kinds  # noqa: E402


def test_code_characters_get_their_python_token_kind():
    text = "# setup\nx = 'a b'  # why\nif x:\n    return 42\n"
    kinds = code_kinds(text)
    at = lambda s: kinds[text.index(s)]  # noqa: E731
    assert at("# setup") == "comment" and at("# why") == "comment"
    assert at("x =") == "identifier" and at("if") == "keyword" and at("return") == "keyword"
    assert at("'a b'") == "literal" and kinds[text.index("'a b'") + 2] == "literal"  # a space in a string
    assert at("42") == "literal" and at("=") == "operator" and at(":") == "operator"
    assert kinds[text.index("    return")] == "whitespace"


def test_prose_words_are_function_or_content_words():
    text = "The cat sat on the mat, quietly."
    kinds = prose_kinds(text)
    assert kinds[0] == "function word" and kinds[text.index("cat")] == "content word"
    assert kinds[text.index("on")] == "function word" and kinds[text.index(",")] == "punctuation"
    assert kinds[text.index(" ")] == "whitespace"


def test_a_token_piece_takes_its_first_visible_characters_kind():
    text = "if x:\n    # c\n"
    pieces = ["if", " x", ":", "\n   ", " #", " c", "\n"]
    assert "".join(pieces) == text
    assert piece_kinds(pieces, code_kinds(text)) == ["keyword", "identifier", "operator", "whitespace",
                                                     "comment", "comment", "whitespace"]
