"""Supervised warm start: fit the BAM scorer by gradient descent to rank tokens by future use.

From the recorded full-cache passes (a pool recorded with `pool --attention`), at every update of every layer and KV
head, the scorer sees the same features a NAMM would (normalised EMA spectrogram + recency) and
is trained so that the softmax of its scores over the cached tokens matches the attention the
question and the answer later pay to those tokens (a listwise cross-entropy). The ranking is all
that matters in rank-only mode (the budget cap keeps the top-scoring tokens), so this teaches
the scorer what to keep, query-agnostically: it never sees the question. CMA-ES can refine it;
the shipping choice is always made closed-loop on validation prompts.

    python -m namm.evolution warmstart --pool runs/pool/train --out runs/warmstart/params.pt
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from namm import scorer
from namm.features import RunningNorm, scorer_inputs
from namm.evolution.pool import PoolPrompt, load_pool
from namm.policies.namm import NammPolicy


def fit_norm(recs: list[PoolPrompt]) -> RunningNorm:
    norm = RunningNorm()
    for rec in recs:
        for u in rec.updates:
            norm.update(u["ema"].float())
    norm.frozen = True
    return norm


@functools.lru_cache(maxsize=8)
def _keep_rule(sinks: int, recent: float, fraction: float) -> NammPolicy:
    return NammPolicy(budget=fraction, threshold=False, sinks=sinks, recent=recent)


def protected(pos: torch.Tensor, seen: int, sinks: int, recent: float, fraction: float) -> torch.Tensor:
    """Slots the policy keeps whatever they score: the sinks and the reserved recent window."""
    return _keep_rule(sinks, recent, fraction).protected(pos, seen)


def example(rec: PoolPrompt, update: dict, norm: RunningNorm, sinks: int = 0, recent: float = 0.0,
            fraction: float = 0.28) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of one layer: features [H, S, 25] as NAMM sees them, target distribution [H, S].

    Slots the policy keeps whatever they score (sinks, recent window) are left out of the target:
    the sinks' attention mass would otherwise dominate it, and neither teaches what to choose."""
    pos = update["positions"].long()                        # [H, S], oldest -> newest
    x = scorer_inputs(norm, update["ema"].float(), pos, update["seen"])
    y = rec.importance[update["layer"]].float().gather(-1, pos.clamp(max=rec.importance.shape[-1] - 1))
    y = y.masked_fill(protected(pos, update["seen"], sinks, recent, fraction), 0.0)
    return x, y / y.sum(-1, keepdim=True).clamp(min=1e-9)


def topk_recall(scores: torch.Tensor, y: torch.Tensor, fraction: float) -> float:
    """Share of the target's mass on the top `fraction` of tokens by score (what a cap would keep)."""
    k = max(1, int(round(fraction * scores.shape[-1])))
    top = scores.topk(k, dim=-1).indices
    return float(y.gather(-1, top).sum(-1).mean())


def evaluate_recall(params: torch.Tensor, recs: list[PoolPrompt], norm: RunningNorm, block: int | None,
                    fraction: float, sinks: int = 0, recent: float = 0.0) -> dict:
    w = scorer.unflatten(params)
    got, oracle, newest, streaming = [], [], [], []
    with torch.no_grad():
        for rec in recs:
            for update in rec.updates:
                x, y = example(rec, update, norm, sinks, recent, fraction)
                s = scorer.score_tokens(x, w, block=block)
                pos = update["positions"].long()
                s = s.masked_fill(protected(pos, update["seen"], sinks, recent, fraction), float("inf"))
                got.append(topk_recall(s, y, fraction))
                oracle.append(topk_recall(y, y, fraction))
                age_order = torch.arange(y.shape[-1], dtype=torch.float32).expand_as(y)
                newest.append(topk_recall(age_order, y, fraction))
                streaming.append(topk_recall(age_order.clone().index_fill_(-1, torch.arange(4), 1e9), y, fraction))
    return {"recall": round(float(np.mean(got)), 4), "oracle": round(float(np.mean(oracle)), 4),
            "recency": round(float(np.mean(newest)), 4), "sinks+recent": round(float(np.mean(streaming)), 4)}


def train(recs: list[PoolPrompt], norm: RunningNorm, *, block: int | None = 256, epochs: int = 3,
          lr: float = 3e-3, init_std: float = 0.05, seed: int = 0, accumulate: int = 16,
          val: list[PoolPrompt] | None = None, fraction: float = 0.28, sinks: int = 0, recent: float = 0.0,
          limit_updates: int | None = None, log=print) -> torch.Tensor:
    torch.manual_seed(seed)
    params = (torch.randn(scorer.num_params()) * init_std).requires_grad_()
    opt = torch.optim.Adam([params], lr=lr)
    rng = random.Random(seed)
    items = [(i, j) for i, rec in enumerate(recs) for j in range(len(rec.updates))]
    for epoch in range(epochs):
        rng.shuffle(items)
        t0, total, n = time.perf_counter(), 0.0, 0
        epoch_items = items[:limit_updates] if limit_updates else items
        opt.zero_grad()
        for step, (i, j) in enumerate(epoch_items, 1):
            x, y = example(recs[i], recs[i].updates[j], norm, sinks, recent, fraction)
            s = scorer.score_tokens(x, scorer.unflatten(params), block=block)
            loss = -(y * s.log_softmax(-1)).sum(-1).mean()
            (loss / accumulate).backward()
            total, n = total + loss.item(), n + 1
            if step % accumulate == 0:
                opt.step()
                opt.zero_grad()
        msg = f"epoch {epoch + 1}: loss {total / max(n, 1):.4f} ({time.perf_counter() - t0:.0f} s)"
        if val:
            msg += f", validation recall@{fraction}: {evaluate_recall(params.detach(), val, norm, block, fraction, sinks, recent)}"
        log(msg)
    return params.detach()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", default="runs/pool/train")
    p.add_argument("--val-share", type=float, default=0.15, help="share of the pool held out for the recall check")
    p.add_argument("--out", default="runs/warmstart/namm.pt", help="a NAMM checkpoint (rank-only, with --budget)")
    p.add_argument("--budget", type=float, default=0.28, help="the checkpoint's default kept fraction")
    p.add_argument("--rows", type=int, default=128, help="recomputed window rows (as recorded)")
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--fraction", type=float, default=0.28)
    p.add_argument("--sinks", type=int, default=4, help="first tokens always kept (and left out of the target)")
    p.add_argument("--recent", type=float, default=0.5, help="share of the cap reserved for the newest tokens")
    p.add_argument("--limit-updates", type=int, default=None, help="train on this many random updates per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # unsolved prompts too: the gold answer's attention still points at the evidence, which is
    # what the scorer learns to keep
    recs = load_pool(Path(args.pool), solved_only=False, need=("attention",))
    random.Random(args.seed).shuffle(recs)
    n_val = max(1, int(len(recs) * args.val_share))
    val, fit = recs[:n_val], recs[n_val:]
    print(f"{len(fit)} prompts to fit, {len(val)} held out; tasks: "
          f"{sorted({r.task for r in recs})}")
    norm = fit_norm(fit)
    params = train(fit, norm, block=args.block, epochs=args.epochs, lr=args.lr, seed=args.seed, val=val,
                   fraction=args.fraction, sinks=args.sinks, recent=args.recent,
                   limit_updates=args.limit_updates)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    policy = NammPolicy(params=params.numpy(), budget=args.budget, norm=norm, threshold=False, rows=args.rows,
                        block=args.block, sinks=args.sinks, recent=args.recent)
    policy.save(out, training={"method": "warmstart", "n_fit": len(fit), "n_val": len(val),
                               "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "pool": args.pool})
    print(json.dumps({"saved": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
