"""The sample type shared by every task and the registry of task generators."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable

from namm.tasks.splits import check_split, sample_rng, sample_seed

METRICS = ("contains", "contains_all", "f1", "lm")


@dataclass
class Sample:
    """One evaluation prompt: a long ``context``, a ``question`` about it and the ``answer``.

    ``answer`` is a string or a list of strings; how a list counts depends on
    ``meta["metric"]``: ``contains`` (any one is enough: alternatives), ``contains_all`` (score
    is the fraction found), ``f1`` (best token F1 over alternatives), ``lm`` (the continuation of
    the context, for the language-model fidelity task).
    """

    task: str
    context: str
    question: str
    answer: str | list[str]
    meta: dict = field(default_factory=dict)

    @property
    def answers(self) -> list[str]:
        return [self.answer] if isinstance(self.answer, str) else list(self.answer)

    @property
    def metric(self) -> str:
        return self.meta.get("metric", "contains")

    @property
    def gold_text(self) -> str:
        """The reference answer as one text, for teacher forcing: every part of a
        `contains_all` answer, else the first alternative."""
        return ", ".join(self.answers) if self.metric == "contains_all" else self.answers[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Sample":
        return cls(task=data["task"], context=data["context"], question=data["question"],
                   answer=data["answer"], meta=dict(data.get("meta") or {}))


# (rng, length in tokens, split) -> Sample with task, context, question, answer, meta
Builder = Callable[[random.Random, int, str], Sample]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    build: Builder
    metric: str
    max_new_tokens: int
    description: str


_REGISTRY: dict[str, TaskSpec] = {}


def register(name: str, *, family: str, metric: str, max_new_tokens: int, description: str):
    """Decorator: add a builder to the registry under ``name``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")

    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} registered twice")
        _REGISTRY[name] = TaskSpec(name, family, fn, metric, max_new_tokens, description)
        return fn

    return wrap


def get_task(name: str) -> TaskSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}") from None


def available_tasks() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def _load_all() -> None:
    # importing the family modules runs their @register decorators (in this display order)
    from namm.tasks import retrieval, variable_tracking, common_words, doc_qa, code, lm_fidelity  # noqa: F401,I001


def make_sample(task: str, length: int, split: str, index: int) -> Sample:
    """The ``index``-th sample of ``task`` at ``length`` tokens in ``split`` (deterministic)."""
    spec = get_task(task)
    check_split(split)
    seed = sample_seed(split, index)
    sample = spec.build(sample_rng(task, length, seed), length, split)
    sample.task = task
    sample.meta.update(split=split, seed=seed, index=index, length=length,
                       metric=spec.metric, max_new_tokens=spec.max_new_tokens, family=spec.family)
    return sample


def make_samples(tasks: list[str], lengths: list[int], n_per_task: int, split: str,
                 start: int = 0) -> list[Sample]:
    """``n_per_task`` samples of every task at every length, indices start..start+n-1."""
    return [make_sample(t, length, split, start + i)
            for t in tasks for length in lengths for i in range(n_per_task)]
