"""Scoring a model's answer against the reference: normalised containment and token F1."""

from __future__ import annotations

import re
from collections import Counter

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_ARTICLES = {"a", "an", "the"}


def normalize(text: str) -> str:
    """Lowercase, every run of non-alphanumerics to one space (so 'self._x' ~ 'self x')."""
    return " ".join(_NON_ALNUM.sub(" ", text.lower()).split())


def contains(prediction: str, answer: str) -> bool:
    """Whole-word containment after normalisation ('12' is not found in '123')."""
    ans = normalize(answer)
    return bool(ans) and f" {ans} " in f" {normalize(prediction)} "


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD-style token F1 (articles dropped)."""
    pred = [t for t in normalize(prediction).split() if t not in _ARTICLES]
    gold = [t for t in normalize(answer).split() if t not in _ARTICLES]
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def score_answer(prediction: str, answers: list[str], metric: str) -> float:
    """Score in [0, 1]: ``contains`` any alternative, the fraction of ``contains_all``,
    or the best ``f1`` over alternatives."""
    if not answers:
        raise ValueError("no reference answer")
    if metric == "contains":
        return float(any(contains(prediction, a) for a in answers))
    if metric == "contains_all":
        return sum(contains(prediction, a) for a in answers) / len(answers)
    if metric == "f1":
        return max(token_f1(prediction, a) for a in answers)
    raise ValueError(f"metric {metric!r} does not score text answers")
