"""RULER variable tracking: follow chains of assignments ``VAR B = VAR A`` through noise.

One chain starts from the asked value; a second chain with another value is a distractor.
The answer is every variable of the first chain, so the score is the fraction named.
"""

from __future__ import annotations

import random
import string

from namm.tasks.base import Sample, register
from namm.tasks.haystack import insert_sentences, join_paragraphs, noise_paragraphs
from namm.tasks.lengths import chars_for_tokens

HOPS = 4  # assignments after the initial one, as in RULER's default


def _names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    return names


def chain_statements(names: list[str], value: str) -> list[str]:
    first = [f"VAR {names[0]} = {value}."]
    return first + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]


@register("variable_tracking", family="variable_tracking", metric="contains_all",
          max_new_tokens=40, description="name every variable that ends up holding a value")
def variable_tracking(rng: random.Random, length: int, split: str) -> Sample:
    names = _names(rng, 2 * (HOPS + 1))
    target, distractor = names[: HOPS + 1], names[HOPS + 1:]
    value, other = (str(v) for v in rng.sample(range(10000, 99999), 2))
    statements = chain_statements(target, value) + chain_statements(distractor, other)
    # each chain keeps its order: sorted random depths per chain
    depths = sorted(rng.random() for _ in range(HOPS + 1)) + sorted(rng.random() for _ in range(HOPS + 1))
    budget = chars_for_tokens(length, "noise") - sum(len(s) + 1 for s in statements)
    context = join_paragraphs(insert_sentences(noise_paragraphs(budget), statements, rng, depths))
    question = (f"Find all variables that are assigned the value {value} in the text above, "
                "directly or through other variables. List their names.")
    return Sample("variable_tracking", context, question, target,
                  {"haystack": "noise", "value": value, "distractor_chain": distractor})
