"""`namm eval` / `python -m namm.evaluation`: select samples, run every policy, write the reports."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from namm.errors import BudgetError, InputError
from namm.spec import POLICY_NAMES, Budget, policy_name
from namm.tasks import SPLITS, Sample, available_tasks, load_tasks_file, make_samples, parse_lengths, write_jsonl

from .references import ReferenceCache
from .report import format_tables, plot_records, write_csv
from .results import EvalRecord
from .runner import evaluate


def _package_doc() -> str:
    from namm import evaluation  # the package docstring (protocol, examples) is the help text

    return evaluation.__doc__


def parse_budgets(spec: str) -> list[float | int]:
    """'0.25,0.5,512' -> [0.25, 0.5, 512]: each part as ``namm generate --budget`` reads it
    (namm.spec.Budget.parse_text: up to 1 a kept fraction, a whole number above 1 or tokens=N a
    token cap), in the library's in-process form (a float fraction, an int token count)."""
    out = [Budget.parse_text(part).number for part in (p.strip() for p in spec.split(",")) if part]
    if not out:
        raise BudgetError("no budgets given")
    return out


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policies", default="full,recency,streaming_llm,h2o,tova,snapkv,l2norm,random,surprisal",
                   help=f"comma-separated policies ({', '.join(POLICY_NAMES)}); the full cache is "
                        "always run as the reference")
    p.add_argument("--budgets", default="0.25,0.5",
                   help="comma-separated budgets: up to 1 a kept fraction, a whole number above 1 (or "
                        "tokens=N) a token cap")
    p.add_argument("--lengths", default="1k,2k", help="context lengths in tokens, e.g. 1k,2k,4k or 1500")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tasks", default=None,
                     help=f"comma-separated generated tasks (default: all): {', '.join(available_tasks())}")
    src.add_argument("--tasks-file", default=None,
                     help="JSONL file, one {context, question, answer[, task, metric]} per line")
    p.add_argument("--metric", default="contains", choices=["contains", "contains_all", "f1"],
                   help="scoring of --tasks-file lines that do not name a metric")
    p.add_argument("--n-per-task", type=int, default=3, help="samples per task and length")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--query-aware", action="store_true", help="show the question before the document too")
    p.add_argument("--n-up", type=int, default=512, help="memory update interval in tokens")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override every task's answer length")
    p.add_argument("--truncate", action="store_true", help="let the full cache truncate over-long prompts")
    p.add_argument("--model", default=None, help="local model path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--json-out", default=None, help="write the records here (CSV and PNG beside it)")
    p.add_argument("--csv-out", default=None)
    p.add_argument("--plot-out", default=None)
    p.add_argument("--reference-cache", default=None, help="JSON file keeping full-cache answers across runs")
    p.add_argument("--export-jsonl", default=None,
                   help="only write the selected samples (question-answer tasks) to this JSONL file and exit")
    p.add_argument("--no-progress", action="store_true")


def add_eval_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on a CLI's subparsers (``namm eval ...``)."""
    p = subparsers.add_parser("eval", help="evaluate memory policies on long-context tasks",
                              description=_package_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)
    return p


def select_samples(args) -> list[Sample]:
    if args.tasks_file:
        return load_tasks_file(args.tasks_file, default_metric=args.metric)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else available_tasks()
    return make_samples(tasks, parse_lengths(args.lengths), args.n_per_task, args.split)


def run_eval(args) -> int:
    """``namm eval``: returns the exit status; bad input is one clear line on stderr, status 2."""
    try:
        return _run(args)
    except InputError as exc:  # a bad budget, policy name, document or question
        print(f"namm eval: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from tqdm import tqdm

    try:
        samples = select_samples(args)
    except ValueError as exc:  # namm.tasks reports a bad tasks-file line, length or task name so
        raise InputError(str(exc)) from None
    budgets = parse_budgets(args.budgets)
    if args.export_jsonl:
        qa = [s for s in samples if s.metric != "lm"]
        write_jsonl(qa, args.export_jsonl)
        print(f"wrote {len(qa)} samples to {args.export_jsonl}", file=sys.stderr)
        return 0
    policies = [policy_name(p) for p in args.policies.split(",") if p.strip()]
    runs = [("full", None)] + [(p, b) for p in policies if p != "full" for b in budgets]

    import namm

    lm = namm.load_model(args.model) if args.model else namm.load_model()
    refs = ReferenceCache(args.reference_cache)
    records: list[EvalRecord] = []
    config = {"model": lm.name, "split": None if args.tasks_file else args.split,
              "tasks_file": args.tasks_file, "lengths": None if args.tasks_file else args.lengths,
              "n_per_task": args.n_per_task, "query_aware": args.query_aware, "n_up": args.n_up,
              "policies": policies, "budgets": budgets, "command": " ".join(sys.argv)}

    def save(records):
        """Write what is done so far (after every policy, so a long run that is stopped keeps it)."""
        csv_out, plot_out = args.csv_out, args.plot_out
        if args.json_out:
            out = Path(args.json_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"config": config, "records": [r.to_dict() for r in records]}, indent=1))
            csv_out, plot_out = csv_out or out.with_suffix(".csv"), plot_out or out.with_suffix(".png")
        if csv_out:
            write_csv(records, csv_out)
        if plot_out:
            plot_records(records, plot_out, title=f"{lm.name}, {config['lengths'] or args.tasks_file}, "
                                                  f"{'query-aware' if args.query_aware else 'query-agnostic'}")
        return args.json_out, csv_out, plot_out

    with tqdm(total=len(runs) * len(samples), desc="eval", unit="prompt", file=sys.stderr,
              disable=args.no_progress, dynamic_ncols=True) as bar:
        for policy, budget in runs:
            bar.set_postfix_str(f"{policy} {budget if budget is not None else ''}".strip())
            records.append(evaluate(lm, samples, policy, budget, query_aware=args.query_aware, n_up=args.n_up,
                                    max_new_tokens=args.max_new_tokens, truncate=args.truncate,
                                    reference_cache=refs, progress=bar.update))
            save(records)
    print(format_tables(records))
    written = [str(p) for p in save(records) if p]
    if written:
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m namm.evaluation", description=_package_doc(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(p)
    return run_eval(p.parse_args(argv))

