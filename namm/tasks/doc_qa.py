"""Document QA over real prose with distractors.

The context is a set of real documents of the split (Python reference sections, stdlib module
docs), each under a ``Document N: title`` header.

* ``doc_qa``: three short facts about one person (home city, profession, instrument) are
  planted in the documents; one is asked. The fact and the question use the same words ("The
  home city of X is Y." / "What is the home city of X?"), and the other two facts are the
  distractors. The answer is the planted value.
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

# relation -> (fact template, question template, value pool). The question repeats the fact's
# words: asked "In which city was X born?" about "X was born in Y.", SmolLM2 with the full cache
# mostly talked about the documents instead (train split, 2k tokens, one person: 0 of 6 right);
# asked "What is the home city of X?" about "The home city of X is Y.", 4 of 6 even at 4k. Other
# people with the asked relation (the first version had three, one sharing the first name)
# defeat it with the full cache (2k: 1 of 6 with three, 4 of 6 with one; 4k: 1 of 6 with one),
# so the only distractors are the person's other two facts.
RELATIONS = {
    "city": ("The home city of {name} is {value}.", "What is the home city of {name}?", CITIES),
    "profession": ("The profession of {name} is {value}.", "What is the profession of {name}?", PROFESSIONS),
    "instrument": ("The instrument of {name} is the {value}.", "What is the instrument of {name}?", INSTRUMENTS),
}


def render_documents(docs: list[ProseDoc]) -> str:
    return "\n\n".join(f"Document {i}: {d.title}\n\n" + "\n\n".join(d.paragraphs)
                       for i, d in enumerate(docs, 1))




def _plant(docs: list[ProseDoc], facts: list[str], rng: random.Random) -> list[ProseDoc]:
    """Each fact goes into a random document at a random sentence boundary."""
    by_doc: dict[int, list[str]] = {}
    for fact in facts:
        by_doc.setdefault(rng.randrange(len(docs)), []).append(fact)
    return [ProseDoc(d.source_id, d.title, tuple(insert_sentences(list(d.paragraphs), by_doc[i], rng)))
            if i in by_doc else d for i, d in enumerate(docs)]


@register("doc_qa", family="doc_qa", metric="contains", max_new_tokens=24,
          description="one of three planted facts about a person, in real documents")
def doc_qa(rng: random.Random, length: int, split: str) -> Sample:
    relation = rng.choice(sorted(RELATIONS))
    target = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    truth = {rel: rng.choice(pool) for rel, (_t, _q, pool) in RELATIONS.items()}
    facts = [template.format(name=target, value=truth[rel]) for rel, (template, _q, _p) in RELATIONS.items()]
    rng.shuffle(facts)
    budget = chars_for_tokens(length, "prose") - sum(len(f) + 1 for f in facts)
    docs = _plant(prose_documents(split, budget, rng), facts, rng)
    question = RELATIONS[relation][1].format(name=target)
    return Sample("doc_qa", render_documents(docs), question, truth[relation],
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
