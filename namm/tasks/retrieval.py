"""RULER-style needle-in-a-haystack retrieval: passkey, single, multi-key, multi-value.

Needles are planted at sentence boundaries of the haystack (the RULER noise sentences for the
passkey, real prose of the split otherwise); the answer is whatever was planted, so it is
correct by construction.
"""

from __future__ import annotations

import random

from namm.tasks.base import Sample, register
from namm.tasks.haystack import insert_sentences, join_paragraphs, noise_paragraphs, prose_paragraphs
from namm.tasks.lengths import chars_for_tokens
from namm.tasks.words import ADJECTIVES, NOUNS

NEEDLE = "The special magic number for {key} is: {value}."
MULTI_VALUE_NEEDLE = "One of the special magic numbers for {key} is: {value}."
PASSKEY_QUESTION = "What is the pass key? Answer with the number only."


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def _distinct_keys(rng: random.Random, n: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < n:
        key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if key not in keys:
            keys.append(key)
    return keys


def _distinct_numbers(rng: random.Random, n: int) -> list[str]:
    values: list[str] = []
    while len(values) < n:
        v = _number(rng)
        if v not in values:
            values.append(v)
    return values


def spread_depths(n: int, rng: random.Random) -> list[float]:
    """One depth per needle, each in its own n-th of the text (in random order), away from the
    n-th's edges, so that no two needles are neighbours."""
    slots = list(range(n))
    rng.shuffle(slots)
    return [(slot + 0.15 + 0.7 * rng.random()) / n for slot in slots]


def _prose_with(needles: list[str], rng: random.Random, length: int, split: str, spread: bool = False) -> str:
    budget = chars_for_tokens(length, "prose") - sum(len(n) + 1 for n in needles)
    paragraphs = prose_paragraphs(split, budget, rng)
    depths = spread_depths(len(needles), rng) if spread else None
    return join_paragraphs(insert_sentences(paragraphs, needles, rng, depths))


@register("passkey", family="retrieval", metric="contains", max_new_tokens=16,
          description="a 5-digit pass key hidden in repeated noise sentences")
def passkey(rng: random.Random, length: int, split: str) -> Sample:
    key = _number(rng, 5)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    budget = chars_for_tokens(length, "noise") - len(needle)
    paragraphs = insert_sentences(noise_paragraphs(budget), [needle], rng)
    context = ("There is an important piece of information hidden inside a lot of irrelevant "
               "text. Find it and memorize it.\n\n" + join_paragraphs(paragraphs))
    # asked as "What is the pass key?" alone, SmolLM2 answers "The pass key is the pass key." on
    # most prompts (test split, 1.2k tokens: 1 of 4 right); naming the answer's form fixes it
    return Sample("passkey", context, PASSKEY_QUESTION, key, {"haystack": "noise"})


@register("niah_single", family="retrieval", metric="contains", max_new_tokens=24,
          description="one 'special magic number' sentence planted in real prose")
def niah_single(rng: random.Random, length: int, split: str) -> Sample:
    key, value = _distinct_keys(rng, 1)[0], _number(rng)
    context = _prose_with([NEEDLE.format(key=key, value=value)], rng, length, split)
    return Sample("niah_single", context, f"What is the special magic number for {key}?", value,
                  {"haystack": "prose", "key": key})


@register("niah_multikey", family="retrieval", metric="contains", max_new_tokens=24,
          description="four similar magic-number sentences with different keys; ask one")
def niah_multikey(rng: random.Random, length: int, split: str) -> Sample:
    keys, values = _distinct_keys(rng, 4), _distinct_numbers(rng, 4)
    needles = [NEEDLE.format(key=k, value=v) for k, v in zip(keys, values)]
    target = rng.randrange(4)
    # spread: planted at random depths, two needles were often neighbours, and the full cache
    # then answered with the next one's number (train split, 1k tokens: 5 of 10 right; 7 of 10
    # with one needle per quarter)
    context = _prose_with(needles, rng, length, split, spread=True)
    return Sample("niah_multikey", context, f"What is the special magic number for {keys[target]}?",
                  values[target], {"haystack": "prose", "key": keys[target], "distractor_keys":
                                   [k for i, k in enumerate(keys) if i != target]})


@register("niah_multivalue", family="retrieval", metric="contains_all", max_new_tokens=48,
          description="one key with four magic numbers spread through prose; ask for all")
def niah_multivalue(rng: random.Random, length: int, split: str) -> Sample:
    key, values = _distinct_keys(rng, 1)[0], _distinct_numbers(rng, 4)
    needles = [MULTI_VALUE_NEEDLE.format(key=key, value=v) for v in values]
    context = _prose_with(needles, rng, length, split)
    return Sample("niah_multivalue", context,
                  f"What are all the special magic numbers for {key}? List every one of them.",
                  values, {"haystack": "prose", "key": key})
