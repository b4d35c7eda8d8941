"""The generation loop (`run`) and exporting a run's solution as a NAMM policy file."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .config import EvolveConfig, config_from_dict
from .fitness import SyntheticFitness, TaskFitness
from .cma_loop import step
from .optimizer import checkpoint_optimizer, load_optimizer, make_optimizer
from .records import CHECKPOINT, RunState, load_state, save_policy, save_state, write_logs


def run(cfg: EvolveConfig, resume: bool = False, fitness=None, log: Callable[[str], None] | None = None,
        progress: bool = True, stop_after: int | None = None) -> RunState:
    """Run (or resume) the evolution described by ``cfg``; returns the final state.

    ``fitness`` (an object like TaskFitness) is built from the config when not given.
    ``stop_after`` stops after that many generations in this call (tests)."""
    from tqdm import tqdm

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if resume:
        state = load_state(out_dir)
        saved = config_from_dict(state.config)
        if saved.to_dict() != cfg.to_dict():
            diff = sorted(k for k in cfg.to_dict() if cfg.to_dict()[k] != saved.to_dict()[k])
            log(f"resume: using the checkpoint's config (the given one differs in: {', '.join(diff)})")
        cfg = saved
        opt = load_optimizer(state.optimizer)
        log(f"resumed {out_dir / CHECKPOINT}: generation {state.generation}, stage {state.stage + 1}, "
            f"sigma {opt._sigma:.4g}")
    else:
        if (out_dir / CHECKPOINT).exists():
            raise FileExistsError(f"{out_dir / CHECKPOINT} exists: pass --resume to continue it, or another out_dir")
        state = None
        opt = None
    if fitness is None:
        fitness = (SyntheticFitness(cfg) if cfg.fitness == "synthetic"
                   else TaskFitness(cfg, out_dir=out_dir, norm_state=state.norm if state else None))
    if state is None:
        fitness.prepare(log)
        opt = make_optimizer(cfg, fitness.dim)
        state = RunState(config=cfg.to_dict(), optimizer={}, norm=fitness.norm_state)
        state.optimizer, opt = checkpoint_optimizer(opt)
        if cfg.validate_every and cfg.fitness == "tasks":
            z = fitness(np.zeros(fitness.dim), split="validation")
            state.zero_validation = {"normalised": z.normalised, "kept": z.kept_fraction, "per_task": z.per_task}
            log(f"validation, zero parameters + budget {cfg.budget}: normalised {z.normalised:.3f}, "
                f"kept {z.kept_fraction:.3f}")
        save_state(out_dir, state)
    else:
        fitness.prepare(log)
    title = f"NAMM CMA-ES, {cfg.model or 'SmolLM2-135M-Instruct'}, pop {cfg.population}, budget {cfg.budget}"
    if resume:  # a kill between the logs and the checkpoint left a row the state does not know
        write_logs(out_dir, state.logs, title, plot=False)
    done_here = 0
    while state.stage < len(cfg.stages):
        stage = cfg.stages[state.stage]
        if state.stage_generation >= stage.generations:
            state.stage += 1
            state.stage_generation = 0
            continue
        if stop_after is not None and done_here >= stop_after:
            return state
        fitness.set_stage(stage.tasks)
        t0 = time.perf_counter()
        results = []
        bar = tqdm(total=cfg.population + 1, desc=f"gen {state.generation + 1} stage {state.stage + 1}",
                   unit="cand", file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True)

        def score_population(xs):
            for x in xs:
                r = fitness(x)
                results.append(r)
                bar.update(1)
                bar.set_postfix_str(f"fit {r.fitness:.3f} kept {r.kept_fraction:.2f}")
            return [r.fitness for r in results]

        step(opt, score_population)
        mean = np.array(opt.mean, copy=True)
        m = fitness(mean)
        bar.update(1)
        bar.close()
        fits = [r.fitness for r in results]
        best = int(np.argmax(fits))
        row = {"generation": state.generation + 1, "stage": state.stage + 1,
               "stage_generation": state.stage_generation + 1, "tasks": list(stage.tasks),
               "best_fitness": fits[best], "mean_fitness": float(np.mean(fits)), "worst_fitness": float(min(fits)),
               "best_normalised": results[best].normalised,
               "mean_solution_fitness": m.fitness, "mean_solution_normalised": m.normalised,
               "mean_solution_kept": m.kept_fraction, "mean_solution_fidelity": m.fidelity,
               "mean_solution_per_task": m.per_task,
               "population_kept": float(np.mean([r.kept_fraction for r in results])),
               "sigma": float(opt._sigma), "forwards": sum(r.forwards for r in results) + m.forwards,
               "validation_normalised": None, "validation_kept": None}
        state.generation += 1
        state.stage_generation += 1
        if cfg.validate_every and cfg.fitness == "tasks" and (
                state.generation % cfg.validate_every == 0 or state.stage_generation == stage.generations):
            v = fitness(mean, split="validation")
            row["validation_normalised"], row["validation_kept"] = v.normalised, v.kept_fraction
            bv = state.best_validated
            if bv is None or v.normalised > bv["normalised"]:
                state.best_validated = {"generation": state.generation, "normalised": v.normalised,
                                        "kept": v.kept_fraction, "per_task": v.per_task, "params": mean}
        row["seconds"] = time.perf_counter() - t0
        state.wall_seconds += row["seconds"]
        state.logs.append(row)
        state.optimizer, opt = checkpoint_optimizer(opt)  # go on from what is saved: exact resume
        if state.stage_generation >= stage.generations:
            state.stage += 1
            state.stage_generation = 0
        state.done = state.stage >= len(cfg.stages)
        write_logs(out_dir, state.logs, title,
                   plot=state.done or (cfg.plot_every > 0 and state.generation % cfg.plot_every == 0))
        if cfg.fitness == "tasks":
            save_policy(out_dir / "mean.pt", mean, state.norm, cfg, generation=state.generation)
        save_state(out_dir, state)  # last: a checkpoint never points past the logs it describes
        log(f"gen {row['generation']:3d} stage {row['stage']} | best {row['best_fitness']:.3f} "
            f"pop {row['mean_fitness']:.3f} | mean-solution {m.fitness:.3f} (norm {m.normalised:.3f}, "
            f"kept {m.kept_fraction:.3f}) | sigma {row['sigma']:.4f} | {row['seconds']:.0f} s, {row['forwards']} fwd"
            + (f" | val {row['validation_normalised']:.3f}" if row["validation_normalised"] is not None else ""))
        done_here += 1
    if not state.done:
        state.done = True
        write_logs(out_dir, state.logs, title)
    save_state(out_dir, state)
    return state


def export_solution(cfg: EvolveConfig, path: str | Path, which: str = "mean") -> dict:
    """Write a finished (or stopped) run's solution as a NammPolicy checkpoint; returns its metadata."""
    state = load_state(Path(cfg.out_dir))
    cfg = config_from_dict(state.config)
    opt = load_optimizer(state.optimizer)
    if which == "best-validated":
        if not state.best_validated:
            raise ValueError("the run has no validated mean (validate_every was 0 or no validation ran yet)")
        params, gen = state.best_validated["params"], state.best_validated["generation"]
    elif which == "zero":
        params, gen = np.zeros_like(opt.mean), 0
    else:
        params, gen = opt.mean, state.generation
    meta = {"which": which, "generation": gen, "generations_run": state.generation,
            "wall_seconds": state.wall_seconds, "zero_validation": state.zero_validation,
            "best_validated": {k: v for k, v in (state.best_validated or {}).items() if k != "params"} or None,
            "last_log": state.logs[-1] if state.logs else None}
    save_policy(Path(path), params, state.norm, cfg, training=meta)
    return meta
