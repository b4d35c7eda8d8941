"""CMA-ES training of a NAMM (``namm evolve --config FILE``, ``python -m namm.evolution evolve``, or
``python -m namm.evolve``): the pipeline's closed-loop stage.

What it does, following the paper (Sakana AI, arXiv 2410.13166) where it can on 2 CPU cores:

* CMA-ES (the ``cmaes`` library) over the scorer's flat parameter vector; the mean starts at
  zero (all-zero parameters keep everything) and the mean is the solution that ships.
* Fitness of a candidate = mean over tasks of (task score with the candidate / full-cache task
  score on the same prompts), from train-split prompts, plus two optional, reported terms:
  ``fidelity_weight`` x mean probability of the full cache's answer tokens under the candidate
  (a smooth tie-breaker for the coarse exact-match scores) and ``memory_weight`` x (1 - kept
  fraction).
* Incremental stages: each stage adds tasks and continues from the previous stage's optimizer.
* Work that does not depend on the candidate is done once: the full-cache answers, the
  feature normalisation statistics (the zero-parameter NAMM reads the train prompts, then the
  statistics are frozen and stored), and the first ``n_up`` tokens of every prompt: their
  forward pass is the same for every candidate, so it is run once with the update held back,
  kept as a cache snapshot, and each candidate restores it and runs the update it would have
  run inside that forward (exactly the same arithmetic; tests check it against ``generate``).
* A checkpoint after every generation (atomic: temp file + ``os.replace``) with the pickled
  optimizer, its RNG state, the generation, stage, logs and normalisation; ``--resume``
  continues from it with the same state, also after ``kill -9``.
* Logs: ``log.json``, ``log.csv`` and ``curves.png`` in the output folder after every generation.

The config is a JSON file (see ``configs/evolve-smollm2.json`` and ``docs/evolution.md``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .evolution import *  # noqa: F401,F403  (the training API, re-exported for `namm.evolve.run` etc.)
from .evolution import ConfigError, export_solution, load_config, run


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="JSON config (see configs/evolve-smollm2.json)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pkl")
    p.add_argument("--model", default=None, help="local model path (overrides the config's 'model')")
    p.add_argument("--out-dir", default=None, help="output folder (overrides the config's 'out_dir')")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="do not train: write the run's solution as a NAMM checkpoint (params, frozen "
                        "normalisation, budget, config) to PATH, e.g. namm/checkpoints/smollm2-135m.pt")
    p.add_argument("--export-which", default="mean", choices=["mean", "best-validated", "zero"],
                   help="with --export: the last CMA mean, the mean that scored best on validation, or zeros")


def cmd_evolve(args) -> int:
    try:
        cfg = load_config(args.config, {"model": args.model, "out_dir": args.out_dir})
    except ConfigError as exc:
        print(f"namm evolve: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.export:
            meta = export_solution(cfg, args.export, args.export_which)
            print(json.dumps({"exported": args.export, **meta}, default=str))
            return 0
        state = run(cfg, resume=args.resume, progress=not args.no_progress)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"namm evolve: error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.out_dir)
    print(json.dumps({"generations": state.generation, "wall_seconds": round(state.wall_seconds, 1),
                      "out_dir": str(out), "last": state.logs[-1] if state.logs else None}, default=str))
    return 0


def add_evolve_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evolve", help="train a NAMM with CMA-ES", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=cmd_evolve)
    return p


def main(argv: list[str] | None = None, prog: str = "python -m namm.evolve") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return cmd_evolve(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
