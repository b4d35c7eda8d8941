"""CMA-ES over NAMM's attention scorer on top of the shipped surprisal channel: does reading the
attention add anything to `surprisal`?

A candidate is the BAM scorer's parameters (namm/scorer.py), its score added to the shipped
`surprisal` policy's (same sinks, recent window, word-surprisal views, budget). The all-zero
vector *is* the `surprisal` policy, so the search starts from it (warm start: no worse).
`--params head` evolves only the scorer's linear head (26 numbers: with the attention block at
zero the score is a linear function of the 17 spectrogram bins and the recency embedding);
`--params all` evolves all 4,172 (diagonal CMA-ES).

    # the pool (namm/evolution/pool.py: the full cache's surprisal, answers and gold log-probs)
    python -m namm.evolution pool unpack --pool runs/pool/train
    # trust check: open-loop surrogate against the real closed loop on random candidates
    python -m namm.evolution scorer correlation --pool runs/pool/train --params head
    # CMA-ES, a fresh mini-batch of solved prompts per generation, state written every generation
    python -m namm.evolution scorer evolve --pool runs/pool/train --params head --out docs/results/scorer-cma-head
    # the mean as a NAMM file (the shipped file's settings, the evolved scorer), validated closed loop
    python -m namm.evolution scorer export --state docs/results/scorer-cma-head/state.pt --out runs/namm-head.pt
    # or a candidate the correlation run scored closed loop
    python -m namm.evolution scorer export --correlation docs/results/scorer-cma-head/correlation.json --candidate 1 --out runs/namm-c1.pt

Fitness is surprisal_search's open-loop teacher-forced surrogate with a keep-mask per layer and
KV head: each prompt's document is read once per generation by the full cache while the window
attention spectrograms are recorded (`pool.RecordingNamm`, what any NAMM computes before
its first eviction), every candidate's decisions are `NammPolicy.select` replayed update after
update over those features and the full cache's surprisal, and all candidates answer in one
batched forward over the document's KV with their masks.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from namm import scorer
from namm.features import scorer_inputs
from namm.generate import prefill
from namm.memory import NammCache
from namm.policies.base import UpdateContext
from namm.policies.namm import NammPolicy
from namm.policies.surprisal import SurprisalPolicy

from .cma_loop import Scored, run_generations
from .optimizer import load_optimizer
from .pool import PoolPrompt, RecordingNamm, load_pool
from .refine import spearman
from .surrogate import closed_loop_fitness, masked_answer_log_probs, relative

SUBSPACES = ("head", "all")


def subspace_indices(name: str) -> np.ndarray:
    """Indices of the flat scorer vector that evolve: `all`, or `head` (the linear head wh, bh)."""
    if name == "all":
        return np.arange(scorer.num_params())
    if name != "head":
        raise ValueError(f"--params must be one of {SUBSPACES}, got {name!r}")
    out, start = [], 0
    for pname, shape in scorer.param_shapes():
        n = math.prod(shape)
        if pname in ("wh", "bh"):
            out.extend(range(start, start + n))
        start += n
    return np.array(out)


def full_params(x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    params = np.zeros(scorer.num_params(), dtype=np.float32)
    params[indices] = x
    return params


class ReplayScorer(NammPolicy):
    """`NammPolicy.select` over recorded features (open loop): `features` [1, H, S, 25] of the
    update being replayed and the update's pooled surprisal, computed once per prompt (it is the
    same for every candidate, layer and head)."""

    features: torch.Tensor
    pooled: dict[int, torch.Tensor]  # seen -> [seen]

    def token_features(self, ctx):
        return self.features

    def pooled_surprisal(self, ctx):
        return self.pooled[ctx.seen][ctx.positions]


def base_policy(checkpoint: str | Path, budget: float) -> ReplayScorer:
    """The shipped checkpoint's surprisal channel at `budget` with a zero scorer (= `surprisal`)."""
    return ReplayScorer.variant(checkpoint, {"scorer": "zero"}, budget=budget)


class DocumentPass:
    """One prompt read by the full cache: its KV per layer, and per layer the (seen, scorer
    inputs [H, S, 25]) of every update, as recorded under the full cache."""

    def __init__(self, lm, prompt: PoolPrompt, policy: ReplayScorer, n_up: int = 512):
        rec = RecordingNamm(policy.attention_rows)
        cache = NammCache(lm.model.config, rec, n_up=n_up)
        prefill(lm, cache, prompt.ctx_ids)
        cache.flush()
        self.length = prompt.ctx_ids.shape[1]
        self.kv = [(layer.keys[:, :, :layer.length].clone(), layer.values[:, :, :layer.length].clone())
                   for layer in cache.layers]
        self.updates: list[list[tuple[int, torch.Tensor]]] = [[] for _ in cache.layers]
        for u in rec.records:
            pos = u["positions"].long()
            if not torch.equal(pos, torch.arange(pos.shape[1]).expand_as(pos)):
                raise RuntimeError("the full cache's slots are not in position order")
            self.updates[u["layer"]].append((u["seen"], scorer_inputs(policy.norm, u["ema"].float(), pos, u["seen"])))
        # the surprisal channel's pooled score at each update (candidate-independent)
        self.pooled: dict[int, torch.Tensor] = {}
        self.surprisal = sur = prompt.surprisal.float()[None]
        ids = prompt.ctx_ids.reshape(1, -1)
        for seen, _ in self.updates[0]:
            ctx = UpdateContext(layer_idx=0, keys=None, values=None, positions=torch.arange(seen)[None, None],
                                valid=torch.ones(1, 1, seen, dtype=torch.bool), seen=seen, n_new=0,
                                surprisal=sur[:, :seen], token_ids=ids[:, :seen])
            self.pooled[seen] = SurprisalPolicy.pooled_surprisal(policy, ctx)[0, 0]

    def keep_masks(self, policy: ReplayScorer) -> list[torch.Tensor]:
        """Per layer [H, T]: what `policy` keeps of the document (open loop)."""
        policy.pooled = self.pooled
        heads = self.updates[0][0][1].shape[0]
        shared = not policy.has_trained_scorer  # the surprisal alone: one mask for every layer
        masks: list[torch.Tensor] = []
        for layer, updates in enumerate(self.updates):
            if shared and masks:
                masks.append(masks[0])
                continue
            alive = torch.ones(heads, self.length, dtype=torch.bool)
            for seen, x in updates:
                ctx = UpdateContext(layer_idx=layer, keys=None, values=None,
                                    positions=torch.arange(seen).expand(1, heads, seen),
                                    valid=alive[None, :, :seen].clone(), seen=seen, n_new=0,
                                    surprisal=self.surprisal[:, :seen])  # its pooled views: `self.pooled`
                policy.features = x[None]
                alive[:, :seen] &= policy.select(ctx)[0]
            masks.append(alive)
        return masks


@torch.no_grad()
def surrogate_fitness(lm, prompts: list[PoolPrompt], params: list[np.ndarray], policy: ReplayScorer,
                      n_up: int = 512) -> list[float]:
    """Open-loop fitness of every full parameter vector in `params` (see the module docstring)."""
    totals = np.zeros(len(params))
    for p in prompts:
        doc = DocumentPass(lm, p, policy, n_up)
        per_candidate = []
        for x in params:
            policy.set_params(x)
            per_candidate.append(doc.keep_masks(policy))
        masks = [torch.stack([m[layer] for m in per_candidate]) for layer in range(len(doc.kv))]  # [B, H, T]
        lps = masked_answer_log_probs(lm, doc.kv, masks, p.q_ids, p.gold_ids)
        totals += [relative(lp, p.full_log_prob) for lp in lps]
    return list(totals / len(prompts))


def candidate_policy(checkpoint: str | Path, budget: float, params: np.ndarray) -> NammPolicy:
    pol = NammPolicy.variant(checkpoint, {"scorer": "zero"}, budget=budget)
    pol.set_params(params)
    return pol


def correlation_candidates(n: int, sigma: float, dim: int, seed: int) -> list[np.ndarray]:
    """The zero vector, then n - 1 random draws around it (what `correlation` scores)."""
    rng = np.random.default_rng(seed)
    return [np.zeros(dim)] + [rng.normal(0, sigma, dim) for _ in range(n - 1)]


def correlation(lm, checkpoint, prompts, n: int, sigma: float, budget: float, indices: np.ndarray, seed: int,
                log=print) -> dict:
    xs = correlation_candidates(n, sigma, len(indices), seed)
    params = [full_params(x, indices) for x in xs]
    t0 = time.perf_counter()
    sur = surrogate_fitness(lm, prompts, params, base_policy(checkpoint, budget))
    t_sur = time.perf_counter() - t0
    real = []
    for k, x in enumerate(params):
        real.append(closed_loop_fitness(lm, [p.refs() for p in prompts], candidate_policy(checkpoint, budget, x)))
        log(f"candidate {k}: surrogate {sur[k]:.4f}, closed loop {real[-1]:.4f}")
    t_real = time.perf_counter() - t0 - t_sur
    return {"candidates": n, "prompts": len(prompts), "budget": budget, "sigma": sigma, "params": len(indices), "seed": seed,
            "spearman": spearman(sur, real), "pearson": float(np.corrcoef(sur, real)[0, 1]),
            "surrogate_s_per_candidate": t_sur / n, "closed_loop_s_per_candidate": t_real / n,
            "surrogate": sur, "closed_loop": real}


def evolve(lm, checkpoint, pool: Path, out: Path, subspace: str, generations: int, population: int, batch: int,
           sigma: float, budget: float, seed: int, n_up: int = 512, log=print) -> None:
    """CMA-ES from the zero scorer (the `surprisal` policy); the mean is scored beside the
    population every generation, on the same prompts, against the zero vector's score."""
    from cmaes import CMA, SepCMA

    indices = subspace_indices(subspace)
    make = SepCMA if len(indices) > 200 else CMA  # full covariance is out of reach at 4,172 dims (docs/evolution.md)
    policy = base_policy(checkpoint, budget)
    prompts = load_pool(pool, need=("surprisal",))
    if not prompts:
        raise SystemExit(f"{pool}: no prompt the full cache answers right (record them with `pool` or `pool unpack`)")
    zero = full_params(np.zeros(len(indices)), indices)

    def score(xs, mean, generation):
        picked = random.Random(f"{seed}/{generation}").sample(prompts, min(batch, len(prompts)))
        fits = surrogate_fitness(lm, picked, [full_params(x, indices) for x in xs + [mean]] + [zero], policy, n_up)
        return Scored(fits[:-2], {"mean_before": fits[-2], "surprisal": fits[-1]},
                      {"prompts": len(picked), "pool_solved": len(prompts)})

    run_generations(out, generations, lambda: make(mean=np.zeros(len(indices)), sigma=sigma, seed=seed,
                                                   population_size=population),
                    score, state={"params": subspace, "budget": budget, "indices": indices}, log=log)


def export(checkpoint, state_path: Path, out: Path) -> NammPolicy:
    """The optimiser's mean as a NAMM file: the channel's checkpoint with the evolved scorer."""
    state = torch.load(state_path, weights_only=False)
    opt = load_optimizer(state["optimizer"])
    params = full_params(opt.mean, np.asarray(state["indices"]))
    return _write(checkpoint, params, out, {
        "method": f"cma-es over the scorer ({state['params']}) on top of the surprisal channel, open-loop "
                  "teacher-forced surrogate", "generation": state["generation"], "budget": state["budget"]})


def export_candidate(checkpoint, correlation_path: Path, k: int, out: Path) -> NammPolicy:
    """Candidate k of a `correlation` run (scored closed loop there) as a NAMM file."""
    res = json.loads(correlation_path.read_text())
    if not 0 < k < res["candidates"]:
        raise ValueError(f"--candidate must be in 1..{res['candidates'] - 1}, got {k}")
    indices = subspace_indices("head" if res["params"] == 26 else "all")
    x = correlation_candidates(res["candidates"], res["sigma"], len(indices), res.get("seed", 0))[k]
    return _write(checkpoint, full_params(x, indices), out, {
        "method": "random candidate around the zero scorer, chosen by its closed-loop fitness on train prompts",
        "correlation": str(correlation_path), "candidate": k, "closed_loop": res["closed_loop"][k],
        "closed_loop_zero_scorer": res["closed_loop"][0], "budget": res["budget"]})


def _write(checkpoint, params: np.ndarray, out: Path, training: dict) -> NammPolicy:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["params"] = torch.from_numpy(params)
    ckpt["training"] = {**training, "base": ckpt.get("training")}
    torch.save(ckpt, out)
    return NammPolicy.from_checkpoint(out)


def main(argv=None) -> int:
    from namm.checkpoints import default_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("correlation", "evolve", "export"):
        s = sub.add_parser(name)
        s.add_argument("--checkpoint", default=None, help="the surprisal channel's file (default: the shipped one)")
        if name == "export":
            s.add_argument("--state", help="a run's state.pt: its mean")
            s.add_argument("--correlation", help="a correlation.json: its candidate --candidate")
            s.add_argument("--candidate", type=int, default=None)
            s.add_argument("--out", required=True)
            continue
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--pool", default="runs/pool/train")
        s.add_argument("--params", default="head", choices=SUBSPACES)
        s.add_argument("--budget", type=float, default=0.28)
        s.add_argument("--seed", type=int, default=0)
        if name == "correlation":
            s.add_argument("--candidates", type=int, default=12)
            s.add_argument("--prompts", type=int, default=8)
            s.add_argument("--sigma", type=float, default=0.5)
            s.add_argument("--out", default="docs/results/scorer-cma-head/correlation.json")
        else:
            s.add_argument("--out", default="docs/results/scorer-cma-head")
            s.add_argument("--generations", type=int, default=30)
            s.add_argument("--population", type=int, default=12)
            s.add_argument("--batch", type=int, default=16, help="prompts per generation")
            s.add_argument("--sigma", type=float, default=0.5)
    args = p.parse_args(argv)
    checkpoint = args.checkpoint or default_checkpoint(None)
    if args.cmd == "export":
        if bool(args.state) == bool(args.correlation) or bool(args.correlation) != (args.candidate is not None):
            p.error("export: give --state, or --correlation with --candidate")
        try:
            pol = export(checkpoint, Path(args.state), Path(args.out)) if args.state else \
                export_candidate(checkpoint, Path(args.correlation), args.candidate, Path(args.out))
        except ValueError as err:
            p.error(str(err))
        print(json.dumps({"out": args.out, "trained_scorer": pol.has_trained_scorer}))
        return 0
    if not 0.0 < args.budget <= 1.0:
        p.error(f"--budget must be a fraction in (0, 1], got {args.budget}")
    torch.set_num_threads(args.threads)
    from namm import load_model

    lm = load_model()
    if args.cmd == "correlation":
        prompts = load_pool(Path(args.pool), need=("surprisal",))
        picked = random.Random(args.seed + 1).sample(prompts, min(args.prompts, len(prompts)))
        res = correlation(lm, checkpoint, picked, args.candidates, args.sigma, args.budget,
                          subspace_indices(args.params), args.seed)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(json.dumps({k: v for k, v in res.items() if k not in ("surrogate", "closed_loop")}))
        return 0
    evolve(lm, checkpoint, Path(args.pool), Path(args.out), args.params, args.generations, args.population,
           args.batch, args.sigma, args.budget, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
