"""CMA-ES over NAMM's surprisal channel: which pooled views of each token's surprisal, with which
weights, and which recent share keep the answers, scored on an open-loop teacher-forced surrogate.

    # 1. the pool (namm/evolution/pool.py): the candidate-independent full-cache pass of every
    #    prompt, once (token ids, the surprisal of every document token, whether the full cache
    #    answers right, its log-probability of the gold answer); or `pool unpack` the committed one
    python -m namm.evolution pool --split train --n 500 --out runs/pool/train
    # 2. trust check: the surrogate against the real closed-loop fitness on random candidates
    python -m namm.evolution surprisal correlation --pool runs/pool/train --candidates 32 --prompts 12
    # 3. CMA-ES, a fresh mini-batch of solved prompts per generation, state written every generation
    python -m namm.evolution surprisal evolve --pool runs/pool/train --out docs/results/surprisal-cma
    # 4. the optimiser's mean as a checkpoint, to be validated closed-loop before it ships
    python -m namm.evolution surprisal export --state docs/results/surprisal-cma/state.pt --out runs/cma.pt
    # open-loop evidence retention of channel settings (a diagnostic: it did not predict closed loop)
    python -m namm.evolution surprisal retention --budgets 0.5 --mixes '[{"max:33": 1}]'

A candidate is a vector: one weight per view of `BANK` (namm/surprisal.py SURPRISAL_VIEWS) and the
recent share. With a zero spectrogram scorer NAMM's decisions depend on the surprisal alone, the
same for every layer and head, so a candidate's keep-mask over a document is `NammPolicy.select`
replayed on the full cache's surprisal (open loop: after the first eviction the real cache
measures surprisal over what it kept). Its score: exp(mean log-prob of the gold answer under the
candidate's mask - the same under the full cache), capped at 1, averaged over prompts and budgets;
every candidate of a generation is one batched forward of question + answer per prompt and
budget over the document KV, which is computed once per prompt and generation.
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from namm.policies.base import UpdateContext
from namm.policies.namm import NammPolicy

from .cma_loop import Scored, run_generations
from .optimizer import load_optimizer
from .pool import PoolPrompt, full_pass, load_pool
from .refine import spearman
from .surrogate import closed_loop_fitness, masked_answer_log_probs, relative

BANK = ("max:1", "max:9", "max:33", "max:65", "max:129", "mean:33", "ahead:17", "behind:17")
START = {"max:65": 1.0}  # session 5's hand-chosen closed-loop winner (the shipped base until session 8)
SINKS, MIN_KEEP, START_RECENT = 4, 128, 0.25


# ---- candidates ------------------------------------------------------------------------------
def start_vector(mix: dict[str, float] = START, recent: float = START_RECENT) -> np.ndarray:
    return np.array([mix.get(v, 0.0) for v in BANK] + [recent])


def candidate_policy(x: np.ndarray, budget: float) -> NammPolicy:
    """Vector -> NAMM: zero scorer, rank-only (the cap decides), sinks and min_keep as shipped."""
    mix = {v: float(w) for v, w in zip(BANK, x[: len(BANK)]) if abs(w) > 1e-6} or {"max:1": 1e-6}
    recent = float(np.clip(x[len(BANK)], 0.0, 0.9))
    return NammPolicy(budget=budget, threshold=False, sinks=SINKS, recent=recent, min_keep=MIN_KEEP,
                      surprise_mix=mix)


def replay_keep(policy: NammPolicy, surprisal: torch.Tensor, n_up: int = 512,
                token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[T] bool: what `policy` keeps of a T-token document whose surprisal is `surprisal` [T],
    with an update every `n_up` tokens and the flush at the end (as namm.generate reads it)."""
    t = surprisal.shape[0]
    alive = torch.ones(t, dtype=torch.bool)
    ends = list(range(n_up, t + 1, n_up))
    if not ends or ends[-1] != t:
        ends.append(t)
    empty = torch.empty(1, 1, 0, 0)
    prev = 0
    for end in ends:
        ctx = UpdateContext(layer_idx=0, keys=empty, values=empty, positions=torch.arange(end)[None, None],
                            valid=alive[None, None, :end].clone(), seen=end, n_new=end - prev,
                            surprisal=surprisal[None, :end].float(),
                            token_ids=None if token_ids is None else token_ids.reshape(1, -1)[:, :end])
        alive[:end] &= policy.select(ctx)[0, 0]
        prev = end
    return alive


# ---- the surrogate ---------------------------------------------------------------------------
@torch.no_grad()
def surrogate_fitness(lm, prompts: list[PoolPrompt], xs: list[np.ndarray], budgets: list[float],
                      n_up: int = 512) -> list[float]:
    """Open-loop fitness of every candidate in `xs` (see the module docstring)."""
    totals = np.zeros(len(xs))
    count = 0
    for p in prompts:
        cache, _ = full_pass(lm, p.ctx_ids, n_up, surprisal=False)
        kv = [(layer.keys[:, :, :layer.length], layer.values[:, :, :layer.length]) for layer in cache.layers]
        for budget in budgets:
            masks = torch.stack([replay_keep(candidate_policy(x, budget), p.surprisal, n_up) for x in xs])
            lps = masked_answer_log_probs(lm, kv, masks, p.q_ids, p.gold_ids)
            totals += [relative(lp, p.full_log_prob) for lp in lps]
            count += 1
    return list(totals / count)


def real_fitness(lm, prompts: list[PoolPrompt], x: np.ndarray, budgets: list[float]) -> float:
    """The same score closed loop: the candidate really reads each document (surprisal measured
    over what it kept), then the gold answer is teacher-forced."""
    vals = [closed_loop_fitness(lm, [p.refs() for p in prompts], candidate_policy(x, b)) for b in budgets]
    return float(np.mean(vals))


def evidence_spans(tok, p: PoolPrompt, split: str, before: int = 12, most: int = 8) -> list[tuple[int, int]]:
    """Token spans [a, b) of the document holding the answer (each occurrence, at most `most`),
    with the `before` tokens in front of it: the key of a needle, "the instrument of X is"."""
    from namm.tasks import make_sample

    # the text is the tokens' own pieces joined, so a character offset maps back to a token
    pieces = [tok.decode([t]) for t in p.ctx_ids[0].tolist()]
    starts = list(itertools.accumulate((len(piece) for piece in pieces[:-1]), initial=0))
    text = "".join(pieces)
    spans = []
    for answer in make_sample(p.task, p.length, split, p.index).answers:
        c = text.find(answer)
        while c >= 0 and len(spans) < most:
            first = bisect.bisect_right(starts, c) - 1
            last = bisect.bisect_left(starts, c + len(answer)) - 1
            spans.append((max(0, first - before), last + 1))
            c = text.find(answer, c + 1)
    return spans


def evidence_retention(prompts: list[tuple[PoolPrompt, list[tuple[int, int]]]], policy: NammPolicy
                       ) -> dict[str, float]:
    """Per task, the share of prompts of which `policy` (replayed open loop) keeps some occurrence
    of the answer whole: a check with no forward pass that does not saturate where the
    teacher-forced surrogate does (at 0.5 most candidates score the full cache's log-prob)."""
    by: dict[str, list[bool]] = {}
    for p, spans in prompts:
        keep = replay_keep(policy, p.surprisal.float())
        by.setdefault(p.task, []).append(any(bool(keep[a:b].all()) for a, b in spans))
    return {task: float(np.mean(v)) for task, v in sorted(by.items())}


def correlation(lm, prompts: list[PoolPrompt], n: int, sigma: float, budgets: list[float], seed: int,
                log=print) -> dict:
    rng = np.random.default_rng(seed)
    x0 = start_vector()
    xs = [x0] + [x0 + rng.normal(0, sigma, x0.shape) for _ in range(n - 1)]
    t0 = time.perf_counter()
    sur = surrogate_fitness(lm, prompts, xs, budgets)
    t_sur = time.perf_counter() - t0
    real = []
    for k, x in enumerate(xs):
        real.append(real_fitness(lm, prompts, x, budgets))
        log(f"candidate {k}: surrogate {sur[k]:.4f}, closed loop {real[-1]:.4f}")
    t_real = time.perf_counter() - t0 - t_sur
    return {"candidates": n, "prompts": len(prompts), "budgets": budgets, "sigma": sigma,
            "spearman": spearman(sur, real), "pearson": float(np.corrcoef(sur, real)[0, 1]),
            "surrogate_s_per_candidate": t_sur / n, "closed_loop_s_per_candidate": t_real / n,
            "surrogate": sur, "closed_loop": real, "xs": [x.tolist() for x in xs]}


def evolve(lm, pool: Path, out: Path, generations: int, population: int, batch: int, sigma: float,
           budgets: list[float], seed: int, start: np.ndarray | None = None, log=print) -> None:
    """CMA-ES from `start` (default: the shipped channel). The pool is read again every generation,
    so a run can go on while the pool is still being recorded; each generation samples its batch
    from the solved prompts there are then (a resumed run draws the same batches only if the pool
    did not grow meanwhile)."""
    from cmaes import CMA

    x0 = start_vector() if start is None else start

    def score(xs, mean, generation):
        prompts = load_pool(pool, need=("surprisal",))
        if not prompts:
            raise SystemExit(f"{pool}: no prompt the full cache answers right "
                             "(record them with `pool` or `pool unpack`)")
        g = random.Random(f"{seed}/{generation}")  # this generation's batch, whatever ran before
        picked = g.sample(prompts, min(batch, len(prompts)))
        fits = surrogate_fitness(lm, picked, xs + [mean], budgets)
        return Scored(fits[:-1], {"mean_before": fits[-1]}, {
            "prompts": len(picked), "pool_solved": len(prompts),
            "new_mean": lambda opt: json.dumps([round(float(v), 4) for v in opt.mean])})

    run_generations(out, generations, lambda: CMA(mean=x0, sigma=sigma, seed=seed, population_size=population),
                    score, state={"bank": BANK, "budgets": budgets}, log=log)


def state_mean(state_path: Path) -> np.ndarray:
    """The mean of a run's optimiser: where a follow-up run over other budgets starts."""
    return load_optimizer(torch.load(state_path, weights_only=False)["optimizer"]).mean.copy()


def export(state_path: Path, out: Path, budget: float) -> NammPolicy:
    state = torch.load(state_path, weights_only=False)
    opt = load_optimizer(state["optimizer"])
    pol = candidate_policy(opt.mean, budget)
    pol.save(out, training={"method": "cma-es over the surprisal channel (open-loop teacher-forced surrogate)",
                            "generation": state["generation"], "bank": list(BANK), "vector": opt.mean.tolist()})
    return pol


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["pool"], ["pack"], ["unpack"]):  # the pool's own command (namm/evolution/pool.py)
        from . import pool

        return pool.main(argv[1:] if argv[0] == "pool" else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="`surprisal pool|pack|unpack`: aliases of `pool`, `pool pack|unpack`")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("correlation", "evolve", "export", "retention"):
        s = sub.add_parser(name)
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--pool", default="runs/pool/train")
        s.add_argument("--budgets", default="0.28,0.5")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="the model's weights and activations (a pool and a run at another precision)")
        if name == "correlation":
            s.add_argument("--candidates", type=int, default=32)
            s.add_argument("--prompts", type=int, default=12)
            s.add_argument("--sigma", type=float, default=0.3)
            s.add_argument("--out", default="docs/results/surprisal-cma/correlation.json")
        if name == "evolve":
            s.add_argument("--out", default="docs/results/surprisal-cma")
            s.add_argument("--generations", type=int, default=12)
            s.add_argument("--population", type=int, default=12)
            s.add_argument("--batch", type=int, default=24, help="prompts per generation")
            s.add_argument("--sigma", type=float, default=0.3)
            s.add_argument("--start-state", help="start from the mean of this run's state.pt (a new run)")
        if name == "retention":
            s.add_argument("--split", default="train")
            s.add_argument("--mixes", default='[{"max:65": 1}, {"max:33": 1}]', help="JSON list of surprise_mix")
            s.add_argument("--recent", default="0.1,0.25", help="recent shares to try with each mix")
            s.add_argument("--checkpoint", help="also this NAMM file as it is")
        if name == "export":
            s.add_argument("--state", default="docs/results/surprisal-cma/state.pt")
            s.add_argument("--out", required=True)
            s.add_argument("--budget", type=float, default=0.28)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # bad arguments are a usage error before anything loads, not a traceback
        budgets = [float(b) for b in args.budgets.split(",")]
        mixes = json.loads(args.mixes) if args.cmd == "retention" else []
        for mix in mixes:
            NammPolicy(budget=0.5, surprise_mix=mix)
    except (ValueError, TypeError, AttributeError) as err:
        p.error(str(err))
    if args.cmd == "export":
        pol = export(Path(args.state), Path(args.out), args.budget)
        print(json.dumps({"surprise_mix": pol.surprise_mix, "recent": pol.recent, "out": args.out}))
        return 0
    from namm import load_model

    lm = load_model(dtype=getattr(torch, args.dtype))
    if args.cmd == "retention":
        prompts = [(p, evidence_spans(lm.tokenizer, p, args.split))
                   for p in load_pool(Path(args.pool), need=("surprisal",))]
        prompts = [(p, spans) for p, spans in prompts if spans]
        budget = budgets[0]  # the first of --budgets
        policies = {f"{json.dumps(mix)} recent {r}": NammPolicy(budget=budget, threshold=False, sinks=SINKS,
                                                                recent=float(r), min_keep=MIN_KEEP, surprise_mix=mix)
                    for mix in mixes for r in args.recent.split(",")}
        if args.checkpoint:
            policies[args.checkpoint] = NammPolicy.from_checkpoint(args.checkpoint, budget=budget)
        print(f"{len(prompts)} solved prompts with the answer in the document, budget {budget}")
        for name, pol in policies.items():
            by = evidence_retention(prompts, pol)
            print(f"{name}: {np.mean(list(by.values())):.3f} (task mean) {json.dumps({t: round(v, 2) for t, v in by.items()})}")
        return 0
    if args.cmd == "correlation":
        prompts = load_pool(Path(args.pool), need=("surprisal",))
        picked = random.Random(args.seed + 1).sample(prompts, min(args.prompts, len(prompts)))
        res = correlation(lm, picked, args.candidates, args.sigma, budgets, args.seed)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(json.dumps({k: v for k, v in res.items() if k not in ("surrogate", "closed_loop", "xs")}))
        return 0
    start = state_mean(Path(args.start_state)) if args.start_state else None
    evolve(lm, Path(args.pool), Path(args.out), args.generations, args.population, args.batch, args.sigma, budgets,
           args.seed, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
