"""CMA-ES refinement of a warm-started NAMM on the open-loop surrogate fitness.

    python -m namm.evolution refine --init runs/warmstart/namm.pt --out runs/refine --generations 20
    python -m namm.evolution refine --init runs/warmstart/namm.pt --correlation 32 --prompts 6

Each generation draws a fresh mini-batch of recorded prompts (so no small set is memorised),
scores every candidate and the mean with the surrogate, and writes the optimiser state, the
mean and a log row (`--out`), so a run resumes where it stopped, here or on another machine.
`--correlation N` instead scores N random candidates around the initial point with the
surrogate and with the real closed-loop fitness on the same prompts and prints their Spearman
rank correlation: the surrogate is only worth using when it ranks candidates as the real
fitness does. What ships is always chosen closed-loop (`namm.evaluation.compare`).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from namm.evolution.cma_loop import Scored, run_generations
from namm.evolution.pool import load_pool
from namm.evolution.surrogate import Surrogate, closed_loop_fitness
from namm.policies.namm import NammPolicy


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def correlation(sur: Surrogate, init: NammPolicy, n: int, prompts: list[int], sigma: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    base = init.params.numpy()
    cands = [base] + [base + rng.normal(0, sigma, base.shape).astype(np.float32) for _ in range(n - 1)]
    refs = [sur.refs[i] for i in prompts]
    s_fit, c_fit, t_s, t_c = [], [], 0.0, 0.0
    for k, params in enumerate(cands):
        t0 = time.perf_counter()
        s_fit.append(sur.fitness(params, prompts))
        t1 = time.perf_counter()
        pol = NammPolicy(params=params, budget=sur.budget, norm=init.norm, threshold=False,
                         rows=init.attention_rows, block=init.block, sinks=init.sinks, recent=init.recent)
        c_fit.append(closed_loop_fitness(sur.lm, refs, pol))
        t_s, t_c = t_s + t1 - t0, t_c + time.perf_counter() - t1
        print(f"candidate {k}: surrogate {s_fit[-1]:.4f}, closed loop {c_fit[-1]:.4f}", flush=True)
    return {"candidates": n, "prompts": len(prompts), "sigma": sigma, "spearman": spearman(s_fit, c_fit),
            "surrogate_s_per_candidate": t_s / n, "closed_loop_s_per_candidate": t_c / n,
            "surrogate": s_fit, "closed_loop": c_fit}


def evolve(sur: Surrogate, init: NammPolicy, out: Path, generations: int, population: int, batch: int,
           sigma: float, seed: int) -> None:
    """SepCMA from the warm start; each generation's prompts are the next draw of one
    random.Random(seed), replayed after a resume. The mean is scored after the update."""
    from cmaes import SepCMA

    rng, drawn = random.Random(seed), 0
    n = len(sur.recs)

    def score(xs, mean, generation):
        nonlocal drawn
        while drawn <= generation:  # the same mini-batches after a resume
            prompts = rng.sample(range(n), min(batch, n))
            drawn += 1
        return Scored([sur.fitness(x, prompts) for x in xs], {"mean": lambda opt: sur.fitness(opt.mean, prompts)})

    def save_mean(opt, generation):
        NammPolicy(params=opt.mean.astype(np.float32), budget=sur.budget, norm=init.norm, threshold=False,
                   rows=init.attention_rows, block=init.block, sinks=init.sinks, recent=init.recent).save(
            out / "mean.pt", training={"method": "warmstart+cma-es surrogate", "generation": generation})

    run_generations(out, generations, lambda: SepCMA(
        mean=init.params.numpy().astype(np.float64), sigma=sigma, seed=seed, population_size=population),
        score, digits=None, after_save=save_mean, log=lambda m: print(m, flush=True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", required=True, help="warm-start NAMM checkpoint (its norm, rows, block, sinks)")
    p.add_argument("--pool", default="runs/pool/train")
    p.add_argument("--out", default="runs/refine")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--batch", type=int, default=8, help="prompts per generation")
    p.add_argument("--sigma", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--correlation", type=int, default=0, help="measure the surrogate on N candidates instead")
    p.add_argument("--prompts", type=int, default=6, help="prompts for --correlation")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from namm import load_model

    init = NammPolicy.from_checkpoint(args.init)
    lm = load_model()
    # every prompt, solved or not; the tokenizer re-makes the token ids of an old-format file
    recs = load_pool(Path(args.pool), solved_only=False, tokenizer=lm.tokenizer, need=("ids", "attention"))
    sur = Surrogate(lm, recs, init.norm, init.budget, init.block, init.sinks, init.recent)
    if args.correlation:
        prompts = random.Random(args.seed + 1).sample(range(len(recs)), min(args.prompts, len(recs)))
        res = correlation(sur, init, args.correlation, prompts, args.sigma, args.seed)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "correlation.json").write_text(json.dumps(res, indent=1))
        print(json.dumps({k: v for k, v in res.items() if k not in ("surrogate", "closed_loop")}))
        return 0
    evolve(sur, init, Path(args.out), args.generations, args.population, args.batch, args.sigma, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
