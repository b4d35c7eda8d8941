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


class TokenWords:
    """What ``loop_cut`` may know about the text of tokens, from a tokenizer.

    ``twins(a, b)``: two different tokens of one word, up to case and spaces (``The`` opening
    the answer, `` The`` opening its repeat). ``ends_unit(t)``: the token ends a line or a
    sentence, a natural end for the copy that is kept.
    """

    def __init__(self, tokenizer):
        self._decode = lru_cache(maxsize=8192)(lambda t: tokenizer.decode([t]))

    def twins(self, a: int, b: int) -> bool:
        word = self._decode(a).strip().lower()
        return a != b and bool(word) and word == self._decode(b).strip().lower()

    def ends_unit(self, token: int) -> bool:
        text = self._decode(token)
        return text.endswith("\n") or text.rstrip().endswith((".", "!", "?"))


def token_words(tokenizer) -> TokenWords | None:
    return TokenWords(tokenizer) if tokenizer is not None and hasattr(tokenizer, "decode") else None


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
