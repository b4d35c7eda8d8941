"""Paired comparison of memory policies with bootstrap intervals, resumable prompt by prompt.

    python -m namm.evaluation.compare --split test --tasks passkey,niah_single --lengths 1k,2k \
        --n-per-task 12 --policies surprisal,namm,recency,streaming_llm --budgets 0.28 \
        --namm-checkpoint runs/warmstart/namm.pt --out runs/compare/test.jsonl

A policy `namm:key=value[:key=value...]` is the NAMM checkpoint with settings replaced
(`NammPolicy.TUNABLE`, and `scorer=zero`), e.g. `namm:scorer=zero:surprise=1:recent=0.25`;
`surprisal:key=value[...]` the same for the shipped memory (`SurprisalPolicy.TUNABLE`), where
`file=PATH` reads another checkpoint (e.g. one evolved at another precision:
`surprisal:file=runs/bf16.pt`).

Every (policy, budget, prompt) result is appended to `--out` as one JSON line and skipped when
the command is run again, so a long comparison can be stopped, extended with more prompts or
policies, and resumed. The report is over prompts the full cache answers right (a prompt it
gets wrong says nothing about what a memory lost): the normalised score is the mean over tasks
of the policy's mean score, and each difference to the reference policy (`--reference`, default
`surprisal`, the shipped memory; rows of older files name it `namm`) comes with a paired bootstrap 95%
interval (prompts resampled within tasks, the same resample for both policies).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from namm.tasks import make_samples, parse_lengths

from .references import ReferenceCache, _Reference, reference_key, reference_model_name
from .runner import DEFAULT_MAX_NEW_TOKENS, evaluate


def sample_key(s) -> str:
    """Names the prompt and a digest of its text, so a changed task generator is never mistaken
    for results already recorded."""
    digest = hashlib.sha256("\x00".join([s.context, s.question, *s.answers]).encode()).hexdigest()[:10]
    return f"{s.task}@{s.meta.get('length')}#{s.meta.get('split')}/{s.meta.get('index')}:{digest}"


def parse_variant(policy: str) -> dict[str, str]:
    """`namm:recent=0.25:surprise_pool=33` -> {"recent": "0.25", "surprise_pool": "33"}."""
    items = [part.split("=", 1) for part in policy.split(":")[1:]]
    if any(len(kv) != 2 or not kv[0] for kv in items):
        raise SystemExit(f"bad NAMM variant {policy!r}: expected namm:key=value[:key=value...]")
    return dict(items)


def load_results(path: Path) -> dict[tuple, dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["policy"], r["budget"], r["sample"]): r for r in rows}


def normalised(rows: list[dict]) -> float:
    by_task: dict[str, list[float]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r["score"])
    return float(np.mean([np.mean(v) for v in by_task.values()])) if by_task else float("nan")


def bootstrap_diff(a: list[dict], b: list[dict], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of normalised(a) - normalised(b), prompts resampled within tasks (paired)."""
    rng = np.random.default_rng(seed)
    tasks = sorted({r["task"] for r in a})
    idx = {t: [i for i, r in enumerate(a) if r["task"] == t] for t in tasks}
    diffs = []
    for _ in range(n):
        per_task = []
        for t in tasks:
            pick = rng.choice(idx[t], size=len(idx[t]), replace=True)
            per_task.append(np.mean([a[i]["score"] - b[i]["score"] for i in pick]))
        diffs.append(np.mean(per_task))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def report(results: dict[tuple, dict], reference: str = "surprisal") -> str:
    full = {k[2]: r for k, r in results.items() if k[0] == "full"}
    runs = sorted({(k[0], k[1]) for k in results if k[0] != "full"}, key=lambda x: (str(x[1]), x[0]))
    # prompts every run has finished (a run in progress is compared on the same prompts); a prompt
    # the full cache gets wrong is complete with its full row alone (the others are not run on it)
    complete = [s for s in full if full[s]["score"] < 1.0 or all((p, b, s) in results for p, b in runs)]
    solved = sorted(s for s in complete if full[s]["score"] >= 1.0)
    tasks = sorted({full[s]["task"] for s in solved})
    lines = [f"{len(solved)} of {len(complete)} prompts answered right by the full cache ({len(full)} started); "
             f"scores over those; tasks: {', '.join(tasks)}",
             f"{'policy':<16} {'budget':>6} {'n':>4} {'normalised':>10} {'kept':>6} {'s/prompt':>8}   "
             f"{reference} minus policy [95% CI]"]
    for budget in sorted({b for _, b in runs}, key=str):
        ref_rows = {s: results.get((reference, budget, s)) for s in solved}
        for policy, b in [r for r in runs if r[1] == budget]:
            rows = [results.get((policy, b, s)) for s in solved]
            if not rows or any(r is None for r in rows):
                lines.append(f"{policy:<16} {b!s:>6} incomplete ({sum(r is not None for r in rows)}/{len(solved)})")
                continue
            kept = np.mean([r["kept_fraction"] for r in rows if r.get("kept_fraction") is not None] or [np.nan])
            secs = np.mean([r["seconds"] for r in rows])
            line = f"{policy:<16} {b!s:>6} {len(rows):>4} {normalised(rows):>10.3f} {kept:>6.3f} {secs:>8.2f}"
            if solved and policy != reference and all(ref_rows.get(s) is not None for s in solved):
                ref = [ref_rows[s] for s in solved]
                lo, hi = bootstrap_diff(ref, rows)
                line += f"   {normalised(ref) - normalised(rows):+.3f} [{lo:+.3f}, {hi:+.3f}]"
            lines.append(line)
    return "\n".join(lines)


def _reuse_full_row(refs: ReferenceCache, lm, sample, row: dict | None, query_aware: bool) -> None:
    """Hand a full-cache result already in the results file to `evaluate` (no second full run)."""
    if row is None:
        return
    mnt = sample.meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    key = reference_key(reference_model_name(lm), sample, mnt, query_aware, 512)
    if refs.get(key) is None:
        refs.put(key, _Reference(prediction=row["prediction"], score=row["score"], kept_fraction=1.0,
                                 kv_bytes_peak=None, kv_bytes_full_peak=None, tokens_in=None,
                                 seconds=row["seconds"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="validation")
    p.add_argument("--tasks", required=True)
    p.add_argument("--lengths", default="1k,2k")
    p.add_argument("--n-per-task", type=int, default=4)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--policies", default="surprisal,recency,streaming_llm,h2o,snapkv,tova,l2norm")
    p.add_argument("--reference", default="surprisal",
                   help="the policy the others are compared with (default: surprisal, the shipped memory)")
    p.add_argument("--budgets", default="0.28")
    p.add_argument("--namm-checkpoint", default=None, help="NAMM file to evaluate (default: the shipped one)")
    p.add_argument("--out", required=True, help="JSONL of per-prompt results (appended, resumable)")
    p.add_argument("--reference-cache", default=None)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--query-aware", action="store_true",
                   help="show each question before the document too (rows say query_aware; one mode per file)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's weights and activations (rows other than float32 say dtype; one per file)")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = load_results(out)
    mode = (args.query_aware, args.dtype)
    modes = {(bool(r.get("query_aware", False)), r.get("dtype", "float32")) for r in results.values()}
    if modes and modes != {mode}:
        raise SystemExit(f"{out} holds rows of another mode (query_aware, dtype) {sorted(modes)}, not {mode}: "
                         "write this one to another file")
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        from namm import load_model
        from namm.checkpoints import default_checkpoint
        from namm.policies.namm import NammPolicy
        from namm.policies.surprisal import SurprisalPolicy

        samples = make_samples(args.tasks.split(","), parse_lengths(args.lengths), args.n_per_task, args.split,
                               start=args.start)
        # interleaved (index, length, task): a stopped run has covered every task alike
        samples.sort(key=lambda s: (s.meta["index"], s.meta["length"], s.task))
        lm = load_model(dtype=getattr(torch, args.dtype))
        refs = ReferenceCache(args.reference_cache)
        out.parent.mkdir(parents=True, exist_ok=True)
        budgets = [float(b) for b in args.budgets.split(",")]
        runs = [("full", None)] + [(pol, b) for pol in args.policies.split(",") for b in budgets]
        for sample in samples:
            key = sample_key(sample)
            results.update(load_results(out))  # another process may be filling the same file
            for policy, budget in runs:
                if (policy, budget, key) in results:
                    continue
                full_row = results.get(("full", None, key))
                if full_row is not None and full_row["score"] < 1.0:
                    break  # the report compares policies on prompts the full cache answers right
                pol = policy
                if policy.startswith("namm:"):  # a variant: namm:recent=0.25:surprise=1:scorer=zero
                    pol = NammPolicy.variant(args.namm_checkpoint or default_checkpoint(None),
                                             parse_variant(policy), budget=budget, model_name=lm.name)
                elif policy.startswith("surprisal:"):  # surprisal:file=runs/bf16.pt:recent=0.2
                    overrides = parse_variant(policy)
                    base = overrides.pop("file", None) or default_checkpoint(None)
                    pol = SurprisalPolicy.variant(base, overrides, budget=budget, model_name=lm.name)
                elif policy == "namm" and args.namm_checkpoint:
                    pol = NammPolicy.from_checkpoint(args.namm_checkpoint, budget=budget, model_name=lm.name)
                _reuse_full_row(refs, lm, sample, results.get(("full", None, key)), args.query_aware)
                rec = evaluate(lm, [sample], pol, budget, reference_cache=refs, query_aware=args.query_aware)
                r = rec.samples[0]
                row = {"policy": policy, "budget": budget, "sample": key, "task": sample.task,
                       "length": sample.meta.get("length"), "score": r.score, "full_score": r.full_score,
                       "prediction": r.prediction, "kept_fraction": r.kept_fraction, "seconds": r.seconds}
                if args.query_aware:
                    row["query_aware"] = True
                if args.dtype != "float32":
                    row["dtype"] = args.dtype
                results[(policy, budget, key)] = row
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"{key} done", file=sys.stderr, flush=True)
    print(report(results, reference=args.reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
