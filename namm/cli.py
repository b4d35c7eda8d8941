"""`namm` command line: generate | eval | evolve | bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import BudgetError
from .spec import POLICY_NAMES, Budget


def _budget(text: str) -> Budget:
    try:
        return Budget.parse_text(text)
    except BudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _read_document(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"namm: error: --file {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SystemExit(f"namm: error: --file {path}: not UTF-8 text")
    except OSError as exc:
        raise SystemExit(f"namm: error: --file {path}: unreadable ({exc.strerror})")
    if not text.strip():
        raise SystemExit(f"namm: error: --file {path}: the file is empty")
    return text


def _progress_bar(enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="tok", desc="reading", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def cmd_generate(args) -> int:
    document = _read_document(args.file)
    from . import generate, load_model
    from .errors import InputError

    try:
        lm = load_model(args.model)
        # a progress bar only where reading takes a while
        show = not args.no_progress and len(document) > 8000
        progress, close = _progress_bar(show)
        try:
            result = generate(lm, document, args.question, policy=args.policy, budget=args.budget,
                              instruction=args.instruction, max_new_tokens=args.max_new_tokens, n_up=args.n_up,
                              query_aware=args.query_aware, truncate=args.truncate, progress=progress)
        finally:
            close()
    except InputError as exc:  # the input's fault; anything else is a crash with its traceback
        raise SystemExit(f"namm: error: {exc}")
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        s = result.stats
        print(result.text)
        print(f"\n[{result.policy} budget={result.budget}] tokens in {s.tokens_in} out {s.tokens_out}; "
              f"KV kept {s.kv_kept_fraction:.1%}; peak KV {s.kv_bytes_peak / 2**20:.1f} MiB "
              f"(full cache {s.kv_bytes_full_peak / 2**20:.1f} MiB); {s.seconds:.1f} s", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="namm", description="Neural Attention Memory Models for long documents")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer questions about a document with a forgetting memory")
    g.add_argument("--file", required=True, help="UTF-8 text file with the document")
    g.add_argument("--question", action="append", default=None,
                   help="question (repeat for several; the compressed document is reused)")
    g.add_argument("--instruction", default=None, help="instruction, e.g. 'Summarize the document.'")
    g.add_argument("--policy", default="namm", choices=POLICY_NAMES)
    g.add_argument("--budget", type=_budget, default=None,
                   help="max kept fraction in (0, 1] (e.g. 0.3), or max tokens per layer and head: a whole "
                        "number above 1 or tokens=N (default: the policy's own)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=128)
    g.add_argument("--n-up", type=_positive_int, default=512, help="memory update interval in tokens")
    g.add_argument("--model", default=None, help="local Hugging Face checkpoint (default: SmolLM2-135M-Instruct)")
    g.add_argument("--query-aware", action="store_true", help="show the question before the document too")
    g.add_argument("--truncate", action="store_true", help="full cache only: cut a too-long document")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=cmd_generate)

    # every subcommand is part of the package: one that fails to import is a broken install,
    # reported as such, never a subcommand that silently vanishes from --help
    from .bench import add_bench_subparser
    from .evaluation import add_eval_subparser
    from .evolve import add_evolve_subparser

    for add in (add_eval_subparser, add_evolve_subparser, add_bench_subparser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate" and not args.question and not args.instruction:
        parser.error("generate needs --question or --instruction")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
