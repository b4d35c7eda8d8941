"""Document QA over real prose with distractors.

The context is a set of real documents of the split (Python reference sections, stdlib module
docs), each under a ``Document N: title`` header.

* ``doc_qa``: short biographical facts are planted in the documents; the asked fact has
  distractors of the same shape (other people with the same relation, one of them sharing the
  first name) and the person's other facts. The answer is the planted value.
* ``doc_source``: a sentence of the real text is quoted; the answer is the title of the only
  document that contains it.
"""

from __future__ import annotations

import random
import re

from namm.tasks.base import Sample, register
from namm.tasks.haystack import insert_sentences, prose_documents
from namm.tasks.lengths import chars_for_tokens
from namm.tasks.metrics import contains
from namm.tasks.sources import ProseDoc
from namm.tasks.words import CITIES, FIRST_NAMES, INSTRUMENTS, LAST_NAMES, PROFESSIONS

# relation -> (fact template, question template, value pool)
RELATIONS = {
    "city": ("{name} was born in {value}.", "In which city was {name} born?", CITIES),
    "profession": ("{name} works as a {value}.", "What is the profession of {name}?", PROFESSIONS),
    "instrument": ("{name} plays the {value}.", "Which instrument does {name} play?", INSTRUMENTS),
}
N_SAME_RELATION = 4  # the asked fact and three distractors of the same relation


def render_documents(docs: list[ProseDoc]) -> str:
    return "\n\n".join(f"Document {i}: {d.title}\n\n" + "\n\n".join(d.paragraphs)
                       for i, d in enumerate(docs, 1))


def _people(rng: random.Random) -> list[str]:
    """The target, a namesake (same first name), and two others; all full names distinct."""
    first = rng.choice(FIRST_NAMES)
    lasts = rng.sample(LAST_NAMES, 4)
    others = rng.sample([f for f in FIRST_NAMES if f != first], 2)
    return [f"{first} {lasts[0]}", f"{first} {lasts[1]}", f"{others[0]} {lasts[2]}", f"{others[1]} {lasts[3]}"]


def _plant(docs: list[ProseDoc], facts: list[str], rng: random.Random) -> list[ProseDoc]:
    """Each fact goes into a random document at a random sentence boundary."""
    by_doc: dict[int, list[str]] = {}
    for fact in facts:
        by_doc.setdefault(rng.randrange(len(docs)), []).append(fact)
    return [ProseDoc(d.source_id, d.title, tuple(insert_sentences(list(d.paragraphs), by_doc[i], rng)))
            if i in by_doc else d for i, d in enumerate(docs)]


@register("doc_qa", family="doc_qa", metric="contains", max_new_tokens=24,
          description="a planted fact about a person among similar distractor facts, in real documents")
def doc_qa(rng: random.Random, length: int, split: str) -> Sample:
    relation = rng.choice(sorted(RELATIONS))
    people = _people(rng)
    facts, truth = [], {}
    for rel, (template, _q, pool) in RELATIONS.items():
        # the target has every relation; the others only the asked one
        holders = people if rel == relation else people[:1]
        values = rng.sample(pool, len(holders))
        for person, value in zip(holders, values):
            facts.append(template.format(name=person, value=value))
            truth[(person, rel)] = value
    rng.shuffle(facts)
    budget = chars_for_tokens(length, "prose") - sum(len(f) + 1 for f in facts)
    docs = _plant(prose_documents(split, budget, rng), facts, rng)
    target = people[0]
    question = RELATIONS[relation][1].format(name=target)
    return Sample("doc_qa", render_documents(docs), question, truth[(target, relation)],
                  {"haystack": "prose", "person": target, "relation": relation, "facts": facts,
                   "sources": [d.source_id for d in docs]})


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _candidate_sentences(doc: ProseDoc) -> list[str]:
    out = []
    for para in doc.paragraphs:
        for s in _SENTENCE.split(para):
            if 60 <= len(s) <= 200 and s.endswith(".") and '"' not in s:
                out.append(s)
    return out


@register("doc_source", family="doc_qa", metric="contains", max_new_tokens=24,
          description="which document (by title) contains a quoted sentence of real prose")
def doc_source(rng: random.Random, length: int, split: str) -> Sample:
    docs = prose_documents(split, chars_for_tokens(length, "prose"), rng)
    context = render_documents(docs)
    titles = [d.title for d in docs]
    order = list(range(len(docs)))
    rng.shuffle(order)
    for i in order:
        if titles.count(titles[i]) != 1:
            continue
        # a sentence naming its own title would let an echo of the question score
        sentences = [s for s in _candidate_sentences(docs[i])
                     if context.count(s) == 1 and not contains(s, titles[i])]
        if sentences:
            sentence = rng.choice(sentences)
            question = (f'Which document contains the sentence "{sentence}"? '
                        "Answer with the title of the document.")
            return Sample("doc_source", context, question, titles[i],
                          {"haystack": "prose", "sentence": sentence, "document": i + 1,
                           "sources": [d.source_id for d in docs]})
    raise RuntimeError("no uniquely placed sentence in the documents")  # never seen in practice
