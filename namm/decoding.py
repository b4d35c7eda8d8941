"""Greedy decoding that does not loop: the options, transformers' logits processors, and early
stops when the answer starts repeating itself.

Small models decoding greedily fall into loops on real documents ("You should use the GNU
Lesser General Public License instead of this License." eight times), and into looser ones
where a sentence comes back after others ("... a new version of FFI-C." four times in one
summary). Four guards, all applied to the answer's own tokens only, never to the document or
the question, so that copying a number or a name out of the document stays free:

* ``repetition_penalty``: transformers' ``RepetitionPenaltyLogitsProcessor`` (CTRL,
  https://arxiv.org/abs/1909.05858): the logit of every token already in the answer is divided
  by the penalty when positive, multiplied when negative. 1.0 is off.
* ``no_repeat_ngram_size``: transformers' ``NoRepeatNGramLogitsProcessor``: an n-gram of the
  answer may not occur twice. 0 is off.
* ``stop_on_loop``: stop as soon as the end of the answer is two or more back-to-back copies of
  the same span that together cover at least this many tokens, and keep one copy. 0 is off.
  This one never changes a token before the loop; it only cuts the repeats (and their time).
* ``stop_on_repeat``: stop as soon as a sentence or clause of at least this many words repeats
  one earlier in the answer (up to case, spaces, line wraps and the punctuation around it),
  before the repeat and the clauses leading into it. Units end at ``. ! ?``, ``,``, ``;``, and
  at a line end after a list item, a heading, code or a colon (a line end inside wrapped prose
  is a space). 0 is off. Like ``stop_on_loop`` it only cuts: the answer up to the cut is what
  greedy decoding without it gives.

The loop stop's default was chosen on the validation split, where it did not lower the full
cache's scores; the repeat stop's was measured on the test split's recorded answers (scores
unchanged) and on real-document summaries (docs/evaluation.md, "Decoding").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor


@dataclass(frozen=True)
class Decoding:
    """How greedy decoding guards against repetition loops (see the module docstring).

    Args:
        repetition_penalty (float, default 1.0): CTRL penalty on tokens already in the answer;
            1.0 is off, 1.1 to 1.3 is usual.
        no_repeat_ngram_size (int, default 0): forbid any n-gram of this size from occurring
            twice in the answer; 0 is off.
        stop_on_loop (int, default 12): stop when the answer ends in back-to-back copies of one
            span covering at least this many tokens, and keep one copy; 0 is off.
        stop_on_repeat (int, default 4): stop before a sentence or clause of at least this many
            words that repeats one earlier in the answer; 0 is off.
    """

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_on_loop: int = 12
    stop_on_repeat: int = 4

    def __post_init__(self) -> None:
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.stop_on_loop < 0:
            raise ValueError(f"stop_on_loop must be >= 0, got {self.stop_on_loop}")
        if self.stop_on_repeat < 0:
            raise ValueError(f"stop_on_repeat must be >= 0, got {self.stop_on_repeat}")

    @classmethod
    def plain(cls) -> "Decoding":
        """Plain greedy decoding, no guard (token for token what ``model.generate`` does)."""
        return cls(repetition_penalty=1.0, no_repeat_ngram_size=0, stop_on_loop=0, stop_on_repeat=0)

    @property
    def needs_words(self) -> bool:
        """Whether the stops read the text of tokens (``token_words``)."""
        return bool(self.stop_on_loop or self.stop_on_repeat)

    def processors(self) -> LogitsProcessorList:
        procs = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            procs.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        return procs


DEFAULT_DECODING = Decoding()


def next_token(logits: torch.Tensor, answer: list[int], processors: LogitsProcessorList) -> int:
    """The greedy choice from ``logits`` [1, V] after the processors have seen the answer so far."""
    if processors and answer:
        ids = torch.tensor([answer], dtype=torch.long, device=logits.device)
        logits = processors(ids, logits.float().clone())
    return int(logits[0].argmax())


class TokenWords:
    """What ``loop_cut`` may know about the text of tokens, from a tokenizer.

    ``twins(a, b)``: two different tokens of one word, up to case and spaces (``The`` opening
    the answer, `` The`` opening its repeat). ``ends_unit(t)``: the token ends a line or a
    sentence, a natural end for the copy that is kept. ``piece(t)``, ``text(ts)``: the text of a
    token, of tokens.
    """

    def __init__(self, tokenizer):
        self._decode = lru_cache(maxsize=8192)(lambda t: tokenizer.decode([t]))

    def piece(self, token: int) -> str:
        return self._decode(token)

    def text(self, tokens) -> str:
        return "".join(self._decode(t) for t in tokens)

    def twins(self, a: int, b: int) -> bool:
        word = self._decode(a).strip().lower()
        return a != b and bool(word) and word == self._decode(b).strip().lower()

    def ends_unit(self, token: int) -> bool:
        text = self._decode(token)
        return text.endswith("\n") or text.rstrip().endswith((".", "!", "?"))


def token_words(tokenizer) -> TokenWords | None:
    return TokenWords(tokenizer) if tokenizer is not None and hasattr(tokenizer, "decode") else None


def answer_cut(tokens: list[int], decoding: Decoding, words: TokenWords | None) -> int | None:
    """Where the stops of ``decoding`` cut ``tokens`` (checked after every new token), else None."""
    cut = loop_cut(tokens, decoding.stop_on_loop, words)
    if cut is None and words is not None:
        cut = repeat_cut(tokens, decoding.stop_on_repeat, words)
    return cut


_EDGES = " \t\r\n.,;:!?-*\"'`()[]"
# a line that ends a unit however it ends: a list item, a heading, a quote, code or indented text
_LINE_UNIT = re.compile(r"\s*(?:[-*+\u2022]\s|\d+[.)]\s|#|>|```)|\s{2,}\S")
_CLOSERS = "\"')]*`"


@dataclass(frozen=True)
class Unit:
    """A sentence or clause of an answer: tokens [start, end); ``clause`` when a ``,`` or ``;``
    ends it (a sentence, a line or a list item otherwise)."""

    start: int
    end: int
    clause: bool


def _unit_key(text: str) -> tuple[str, int]:
    """A unit's text up to case, spaces, line wraps and the punctuation around it, and its
    word count."""
    words = text.lower().strip(_EDGES).split()
    return " ".join(words), sum(any(c.isalnum() for c in w) for w in words)


def _unit_ends(text: str) -> list[tuple[int, bool]]:
    """(character index, is a clause end) of every unit end in ``text``. A line end inside
    prose that wraps like a PDF ("used to generate\nthe file") is a space, not an end."""
    ends, line_start = [], 0
    for i, c in enumerate(text):
        after = text[i + 1:i + 2]
        if c in ".!?" and (not after or after.isspace() or after in _CLOSERS):
            ends.append((i, False))  # "3.14" and "e.g.x" are no ends
        elif c in ",;" and (not after or after.isspace()):
            ends.append((i, True))  # "1,000" is none
        elif c == "\n":
            line = text[line_start:i]
            if not line.strip() or after == "\n" or _LINE_UNIT.match(line) or line.rstrip().endswith(":"):
                ends.append((i, False))
            line_start = i + 1
    return ends


def answer_units(tokens: list[int], words: TokenWords) -> list[Unit]:
    """The answer's sentences and clauses (``_unit_ends``), each as the tokens holding it; an
    unfinished last unit is left out."""
    pieces = [words.piece(t) for t in tokens]
    token_of = []  # the token holding each character
    for k, piece in enumerate(pieces):
        token_of.extend([k] * len(piece))
    units, start = [], 0
    for i, clause in _unit_ends("".join(pieces)):
        end = token_of[i] + 1
        if end > start:
            units.append(Unit(start, end, clause))
            start = end
    return units


def repeated_units(tokens: list[int], min_words: int, words: TokenWords,
                   units: list[Unit] | None = None) -> list[Unit]:
    """The units (``answer_units``, or ``units`` already found) of at least ``min_words`` words
    whose text repeats an earlier unit's. Also how the evaluation counts repeated sentences."""
    seen, repeats = set(), []
    for unit in answer_units(tokens, words) if units is None else units:
        key, n_words = _unit_key(words.text(tokens[unit.start:unit.end]))
        if n_words < max(min_words, 1):
            continue
        if key in seen:
            repeats.append(unit)
        seen.add(key)
    return repeats


def repeat_cut(tokens: list[int], min_words: int, words: TokenWords) -> int | None:
    """Where to cut ``tokens`` if a unit repeats an earlier one, else None. Off when
    ``min_words`` is 0.

    The cut is before the first repeated unit, and before the clauses that open its sentence
    ("... agreement. The document also covers its use, <repeated clause>," keeps "...
    agreement."): they lead into the repeat, and an answer is not left ending on a comma.
    Checked after every token whose text may end a unit, so the answer stops at the first
    repeat and what is kept has none.
    """
    if min_words <= 0 or not tokens or not any(c in words.piece(tokens[-1]) for c in ".!?,;\n"):
        return None
    units = answer_units(tokens, words)
    repeats = repeated_units(tokens, min_words, words, units)
    if not repeats:
        return None
    k = units.index(repeats[0])
    while k > 0 and units[k - 1].clause and units[k - 1].start > 0:
        k -= 1
    return units[k].start


def loop_cut(tokens: list[int], min_tokens: int, words: TokenWords | None = None) -> int | None:
    """Where to cut ``tokens`` if they end in a loop, else None.

    A loop: the last ``r + p`` tokens have period ``p`` (each equals the token ``p`` before it),
    with at least two whole copies (``r >= p``) and ``r + p >= min_tokens``. Checked after every
    new token, so the loop is caught when it first qualifies. The cut keeps everything before
    the loop and one whole copy of it.

    Where one copy ends is ambiguous (in "- 1379422\n- 1787712\n- 1787712" the period can be
    read as "2\n- 178771"), so with ``words`` the cut moves on to the first token that ends a
    line or a sentence within the next copy, and a copy whose first word changed form ("The
    key is X. The key is X.") starts at that word; without them, or with no such token, it
    keeps exactly one period from where the loop starts.
    """
    n = len(tokens)
    if min_tokens <= 0 or n < min_tokens:
        return None
    for p in range(1, n // 2 + 1):
        r = 0  # trailing tokens equal to the token p before them
        while r < n - p and tokens[n - 1 - r] == tokens[n - 1 - r - p]:
            r += 1
        if r >= p and r + p >= min_tokens:
            start = n - r - p  # the loop's first copy is tokens[start:start + p]
            if words is None:
                return start + p
            if start > 0 and words.twins(tokens[start - 1], tokens[start - 1 + p]):
                start -= 1  # the copy really began one token earlier, in another form
            ends = (c for c in range(start + p, min(n, start + 2 * p) + 1) if words.ends_unit(tokens[c - 1]))
            return next(ends, start + p)
    return None
