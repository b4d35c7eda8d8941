"""Two ways of reading side by side: the same policies on the same prompts in two results files
of `namm.evaluation.compare` (query-agnostic and query-aware, float32 and bfloat16).

    python -m namm.evaluation.modes docs/results/compare-test-s8.jsonl docs/results/compare-test-qa.jsonl \
        --names agnostic,aware --rename-a namm=surprisal

A policy is compared over the prompts both files ran it on: for a memory, the prompts the full
cache answers right in both modes (compare runs a memory only where its own full cache is
right); for the full cache, every prompt both files hold. Each line gives the mean over tasks of
the score in each mode and the difference (second minus first) with a paired bootstrap 95%
interval (prompts resampled within tasks).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .compare import bootstrap_diff, load_results, normalised


def mode_report(a: dict[tuple, dict], b: dict[tuple, dict], names: tuple[str, str] = ("first", "second")) -> str:
    runs = sorted({(k[0], k[1]) for k in a} & {(k[0], k[1]) for k in b},
                  key=lambda run: (run[0] != "full", str(run[1]), run[0]))
    lines = [f"{'policy':<16} {'budget':>6} {'n':>4} {names[0]:>10} {names[1]:>10}   "
             f"{names[1]} minus {names[0]} [95% CI]"]
    for policy, budget in runs:
        prompts = sorted({k[2] for k in a if k[:2] == (policy, budget)} & {k[2] for k in b if k[:2] == (policy, budget)})
        if not prompts:
            continue
        rows_a = [a[(policy, budget, s)] for s in prompts]
        rows_b = [b[(policy, budget, s)] for s in prompts]
        lo, hi = bootstrap_diff(rows_b, rows_a)
        first, second = normalised(rows_a), normalised(rows_b)
        lines.append(f"{policy:<16} {budget!s:>6} {len(prompts):>4} {first:>10.3f} {second:>10.3f}   "
                     f"{second - first:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return "\n".join(lines)


def renamed(results: dict[tuple, dict], renames: dict[str, str]) -> dict[tuple, dict]:
    """Policy names of an older file mapped to today's (`namm=surprisal`: the shipped memory's rows
    from before it had its own name)."""
    return {(renames.get(k[0], k[0]), *k[1:]): r for k, r in results.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first", help="results file of the first mode")
    p.add_argument("second", help="results file of the second mode")
    p.add_argument("--names", default="first,second", help="the two modes' names, for the table")
    p.add_argument("--rename-a", default="", help="old=new policy names in the first file (comma-separated)")
    args = p.parse_args(argv)
    names = tuple(args.names.split(","))
    if len(names) != 2:
        raise SystemExit(f"--names takes two names, got {args.names!r}")
    renames = dict(pair.split("=", 1) for pair in args.rename_a.split(",") if pair)
    for path in (args.first, args.second):
        if not Path(path).exists():
            raise SystemExit(f"{path}: no such results file")
    print(mode_report(renamed(load_results(Path(args.first)), renames), load_results(Path(args.second)), names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
