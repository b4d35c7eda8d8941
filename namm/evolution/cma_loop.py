"""The one CMA-ES generation: `step` (ask a population, score it, tell), used by every search;
and the generation loop of the surrogate searches (refine, surprisal, scorer), `run_generations`.
The closed-loop run (`namm evolve`, loop.py) takes `step` too, inside its own loop: it has stages,
validation and a resume format of its own.

Every generation: ask the optimiser for a population, score it (and whatever else the search
scores beside it, such as the mean) on that generation's mini-batch, tell, append a row to
`out/log.csv`, and write `out/state.pt` with the optimiser and the generation, so a run stopped
anywhere resumes where it stopped, here or on another machine, and goes on as if it had never
stopped (the optimiser continues from what was written: `checkpoint_optimizer`).

What differs between the searches is passed in: how to start the optimiser, how to score a
population (which also picks the generation's mini-batch, deterministically from the
generation), the row's extra fields and their rounding, the state file's extra entries, and a
hook after each save (refine writes its mean as a NAMM file there).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .optimizer import append_log_row, checkpoint_optimizer, resume_or_start, save_run_state

STATE, LOG = "state.pt", "log.csv"


@dataclass
class Scored:
    """A population's scores and the log row's search-specific fields.

    The row is `generation, best, population_mean, *fields, sigma, seconds, *tail`. A field whose
    value is callable is called with the optimiser after `tell` (the updated mean's score, say),
    fields first, then tail, before `seconds` is read."""
    fitness: list[float]                 # the population's, in ask order; higher is better
    fields: dict[str, Any] = field(default_factory=dict)
    tail: dict[str, Any] = field(default_factory=dict)


def step(opt, score: Callable[[list[np.ndarray]], list[float]]) -> tuple[list[np.ndarray], list[float]]:
    """One CMA-ES generation: ask `opt` for its population, score it (higher is better), tell.
    Returns the population and its fitness, in ask order."""
    xs = [opt.ask() for _ in range(opt.population_size)]
    fits = list(score(xs))
    opt.tell([(x, -f) for x, f in zip(xs, fits)])  # cmaes minimises
    return xs, fits


def _resolve(values: dict, opt) -> dict:
    return {k: (v(opt) if callable(v) else v) for k, v in values.items()}


def run_generations(out: Path, generations: int, start: Callable[[], Any],
                    score: Callable[[list[np.ndarray], np.ndarray, int], Scored], *,
                    digits: int | None = 4, state: dict | None = None,
                    after_save: Callable[[Any, int], None] | None = None, log: Callable[[str], None] = print):
    """Run (or resume) a CMA-ES search in `out` up to `generations`; returns the optimiser.

    `start()` makes the optimiser of a new run. `score(xs, mean, generation)` scores the
    population `xs` with the mean before this generation's update; `generation` counts the
    generations done before this one, so a mini-batch drawn from it is the same after a resume.
    `digits` rounds best, population_mean, the fields and sigma (None: as they are). `state`
    adds entries to the state file after optimizer and generation. `after_save(opt, generation)`
    runs after the state is written. Each row is logged as JSON with `log`."""
    out.mkdir(parents=True, exist_ok=True)
    state_path, log_path = out / STATE, out / LOG
    opt, gen = resume_or_start(state_path, start, log, log_path=log_path)

    def rnd(v):  # round() of the value as it is: numpy's rounding of a numpy float, Python's of a float
        return v if digits is None else round(v, digits)

    while gen < generations:
        t0 = time.perf_counter()
        mean, scored = opt.mean.copy(), None

        def score_population(xs):
            nonlocal scored
            scored = score(xs, mean, gen)
            return scored.fitness

        _, fits = step(opt, score_population)
        gen += 1
        fields = _resolve(scored.fields, opt)
        row = {"generation": gen, "best": rnd(fits[int(np.argmax(fits))]),
               "population_mean": rnd(float(np.mean(fits))), **{k: rnd(v) for k, v in fields.items()},
               "sigma": opt._sigma if digits is None else rnd(float(opt._sigma))}
        tail = _resolve(scored.tail, opt)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row.update(tail)
        append_log_row(log_path, row)
        blob, opt = checkpoint_optimizer(opt)  # go on from what is saved: exact resume
        save_run_state(state_path, {"optimizer": blob, "generation": gen, **(state or {})})
        if after_save is not None:
            after_save(opt, gen)
        log(json.dumps(row))
    return opt
