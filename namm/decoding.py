"""Greedy decoding that does not loop: the options, transformers' logits processors, and an
early stop when the answer starts repeating itself.

Small models decoding greedily fall into loops on real documents ("You should use the GNU
Lesser General Public License instead of this License." eight times). Three guards, all
applied to the answer's own tokens only, never to the document or the question, so that
copying a number or a name out of the document stays free:

* ``repetition_penalty``: transformers' ``RepetitionPenaltyLogitsProcessor`` (CTRL,
  https://arxiv.org/abs/1909.05858): the logit of every token already in the answer is divided
  by the penalty when positive, multiplied when negative. 1.0 is off.
* ``no_repeat_ngram_size``: transformers' ``NoRepeatNGramLogitsProcessor``: an n-gram of the
  answer may not occur twice. 0 is off.
* ``stop_on_loop``: stop as soon as the end of the answer is two or more back-to-back copies of
  the same span that together cover at least this many tokens, and keep one copy. 0 is off.
  This one never changes a token before the loop; it only cuts the repeats (and their time).

The defaults were chosen on the validation split (docs/evaluation.md, "Decoding"), where they
did not lower the full cache's scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

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
    """

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_on_loop: int = 12

    def __post_init__(self) -> None:
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.stop_on_loop < 0:
            raise ValueError(f"stop_on_loop must be >= 0, got {self.stop_on_loop}")

    @classmethod
    def plain(cls) -> "Decoding":
        """Plain greedy decoding, no guard (token for token what ``model.generate`` does)."""
        return cls(repetition_penalty=1.0, no_repeat_ngram_size=0, stop_on_loop=0)

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


Twins = Callable[[int, int], bool]


def loop_cut(tokens: list[int], min_tokens: int, twins: Twins | None = None) -> int | None:
    """Where to cut ``tokens`` if they end in a loop, else None.

    A loop: the last ``r + p`` tokens have period ``p`` (each equals the token ``p`` before it),
    with at least two whole copies (``r >= p``) and ``r + p >= min_tokens``. The cut keeps
    everything before the loop and one copy of it. Checked after every new token, so the loop
    is caught when it first qualifies.

    ``twins(a, b)`` says that two different tokens are one word (``The`` opening the answer and
    `` The`` opening its repeat): then the copy kept starts with the first of them, so that
    "The key is X. The key is X. The" is cut to "The key is X." and not "... X. The".
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
            if start > 0 and twins is not None and twins(tokens[start - 1], tokens[start - 1 + p]):
                start -= 1  # the copy really began one token earlier, in another form
            return start + p
    return None


def word_twins(tokenizer) -> Twins | None:
    """``twins`` for ``loop_cut``: two tokens that decode to the same word up to case and spaces."""
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        return None

    @lru_cache(maxsize=4096)
    def word(token: int) -> str:
        return tokenizer.decode([token]).strip().lower()

    return lambda a, b: a != b and bool(word(a)) and word(a) == word(b)
