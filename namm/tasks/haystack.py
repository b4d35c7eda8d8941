"""Filler text of a given size and planting sentences into it at chosen depths."""

from __future__ import annotations

import random
import re

from namm.tasks.sources import ProseDoc, prose_docs

# RULER's classic noise haystack
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def prose_documents(split: str, n_chars: int, rng: random.Random) -> list[ProseDoc]:
    """Whole or cut documents of the split, in random order, adding up to about n_chars.

    The last document is cut at a paragraph boundary; each document is used at most once
    unless the split's prose runs out, in which case the order is reshuffled and reused.
    """
    pool = prose_docs(split)
    if not pool:
        raise RuntimeError(f"no prose documents for split {split!r}")
    out: list[ProseDoc] = []
    total = 0
    while total < n_chars:
        order = list(pool)
        rng.shuffle(order)
        for doc in order:
            paras = []
            for para in doc.paragraphs:
                if total >= n_chars:
                    break
                paras.append(para)
                total += len(para) + 2
            if paras:
                out.append(ProseDoc(doc.source_id, doc.title, tuple(paras)))
            if total >= n_chars:
                break
    return out


def prose_paragraphs(split: str, n_chars: int, rng: random.Random) -> list[str]:
    return [p for d in prose_documents(split, n_chars, rng) for p in d.paragraphs]


def noise_paragraphs(n_chars: int) -> list[str]:
    reps = max(1, n_chars // (len(NOISE) + 1))
    return [" ".join([NOISE] * reps)]


_SENTENCE_END = re.compile(r"(?<=[.!?]) +(?=[A-Z\"'(*])")


def insert_sentences(paragraphs: list[str], sentences: list[str], rng: random.Random,
                     depths: list[float] | None = None) -> list[str]:
    """Plant each sentence at a sentence boundary, at relative depth ``depths[i]`` in [0, 1]
    (uniformly random if not given). Returns new paragraphs; the planted sentences are intact."""
    depths = depths if depths is not None else [rng.random() for _ in sentences]
    # split every paragraph into sentences, remembering where paragraphs end
    pieces: list[tuple[str, bool]] = []  # (sentence, ends_paragraph)
    for para in paragraphs:
        parts = _SENTENCE_END.split(para)
        pieces += [(s, i == len(parts) - 1) for i, s in enumerate(parts)]
    slots = sorted(((min(max(d, 0.0), 1.0), i) for i, d in enumerate(depths)), reverse=True)
    for depth, i in slots:  # deepest first, so earlier positions stay valid
        pos = round(depth * len(pieces))
        pieces.insert(pos, (sentences[i], False))
    out, current = [], []
    for sentence, ends in pieces:
        current.append(sentence)
        if ends:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def join_paragraphs(paragraphs: list[str]) -> str:
    return "\n\n".join(paragraphs)
