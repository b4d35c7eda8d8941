"""RULER common-word extraction: a numbered word list where ten words appear far more often.

The words are taken from the split's own prose vocabulary, so splits share no word pool
beyond chance. The answer is the ten frequent words (score: fraction named).
"""

from __future__ import annotations

import random

from namm.tasks.base import Sample, register
from namm.tasks.lengths import TOKENS_PER_LIST_LINE
from namm.tasks.words import prose_vocabulary

N_COMMON = 10
FREQ_COMMON_MAX = 30  # RULER's freq_cw; shorter lists use fewer repeats so rare words still fit
FREQ_RARE = 3  # RULER's freq_ucw


def word_counts(context: str) -> dict[str, int]:
    """Count the words of a list formatted as '1. word' lines."""
    counts: dict[str, int] = {}
    for line in context.splitlines():
        number, _, word = line.partition(". ")
        if number.isdigit() and word:
            counts[word] = counts.get(word, 0) + 1
    return counts


@register("common_words", family="common_words", metric="contains_all", max_new_tokens=64,
          description="the ten most frequent words of a long numbered list")
def common_words(rng: random.Random, length: int, split: str) -> Sample:
    vocab = list(prose_vocabulary(split))
    rng.shuffle(vocab)
    common = vocab[:N_COMMON]
    lines = int(length / TOKENS_PER_LIST_LINE)
    # common words take about 40% of the lines (RULER's 30 repeats once the list is long)
    freq_common = min(FREQ_COMMON_MAX, max(2 * FREQ_RARE, lines // 25))
    n_rare = min(len(vocab) - N_COMMON, max(10, (lines - N_COMMON * freq_common) // FREQ_RARE))
    rare = vocab[N_COMMON:N_COMMON + n_rare]
    words = common * freq_common + rare * FREQ_RARE
    rng.shuffle(words)
    lines = "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1))
    context = "Below is a numbered list of words. In these words, some appear more often than others.\n\n" + lines
    question = (f"What are the {N_COMMON} most common words in the list above? "
                "Answer with the words only.")
    return Sample("common_words", context, question, common, {"haystack": "words", "n_rare": len(rare),
                                                      "freq_common": freq_common, "freq_rare": FREQ_RARE})
