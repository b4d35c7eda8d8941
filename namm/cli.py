"""`namm` command line: generate | eval | evolve | bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import BudgetError
from .spec import DEFAULT_POLICY, POLICY_NAMES, Budget


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


def _memory_file(path: str) -> str:
    if not Path(path).is_file():
        raise SystemExit(f"namm: error: --memory {path}: no such file")
    return path


def cmd_generate(args) -> int:
    document = _read_document(args.file) if args.file else None
    memory_path = _memory_file(args.memory) if args.memory else None
    from . import ask, generate, load_memory, load_model, read_document, read_manifest, save_memory
    from .errors import InputError, SavedMemoryError

    asked = bool(args.question or args.instruction)
    try:
        lm = load_model(args.model)
        if memory_path:  # a document read before: answer without reading it again
            memory = load_memory(lm, memory_path, policy=args.policy)
            result = ask(lm, memory, args.question, instruction=args.instruction, max_new_tokens=args.max_new_tokens)
        else:
            # a progress bar only where reading takes a while
            show = not args.no_progress and len(document) > 8000
            progress, close = _progress_bar(show)
            policy, n_up = args.policy or DEFAULT_POLICY, args.n_up or 512
            try:
                if args.save_memory or args.retention_html:
                    memory = read_document(lm, document, policy=policy, budget=args.budget, n_up=n_up,
                                           progress=progress)
                else:
                    result = generate(lm, document, args.question, policy=policy, budget=args.budget,
                                      instruction=args.instruction, max_new_tokens=args.max_new_tokens, n_up=n_up,
                                      query_aware=args.query_aware, truncate=args.truncate, progress=progress)
            finally:
                close()
            if args.retention_html:  # what the memory holds once the document is read (namm/retention.py)
                from .retention import document_retention, write_html

                try:
                    where = write_html(document_retention(memory, document), args.retention_html,
                                       title=f"What the memory kept: {Path(args.file).name}")
                except OSError as exc:
                    raise SystemExit(f"namm: error: --retention-html {args.retention_html}: {exc.strerror}")
                print(f"[retention map written to {where}]", file=sys.stderr)
            if args.save_memory:
                path = save_memory(memory, args.save_memory, storage=args.memory_storage)
                print(f"[memory saved to {path}: {memory.tokens} tokens read, {memory.policy.name} "
                      f"budget={memory.policy.budget}, {path.stat().st_size / 2**20:.2f} MiB on disk "
                      f"(keys and values as {read_manifest(path).storage}) "
                      f"(KV {memory.kv_bytes / 2**20:.2f} MiB; full cache {memory.full_kv_bytes / 2**20:.2f} MiB)]",
                      file=sys.stderr)
            if args.save_memory or args.retention_html:
                if not asked:
                    return 0
                result = ask(lm, memory, args.question, instruction=args.instruction,
                             max_new_tokens=args.max_new_tokens)
    except (InputError, SavedMemoryError) as exc:  # the input's fault, or a memory to rebuild
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


def _check_generate(parser: argparse.ArgumentParser, args) -> None:
    """The combinations of generate's options that mean something."""
    if bool(args.file) == bool(args.memory):
        parser.error("generate needs --file (a document) or --memory (a saved memory), not both")
    if args.memory:
        fixed = [flag for flag, value in (("--budget", args.budget), ("--n-up", args.n_up),
                                          ("--query-aware", args.query_aware), ("--truncate", args.truncate),
                                          ("--save-memory", args.save_memory)) if value]
        if fixed:
            parser.error(f"{', '.join(fixed)}: fixed when the memory was read; not with --memory")
    if args.memory_storage and not args.save_memory:
        parser.error("--memory-storage: the storage of a memory saved with --save-memory; not without it")
    if args.save_memory:
        for flag, value in (("--query-aware", args.query_aware), ("--truncate", args.truncate)):
            if value:
                parser.error(f"{flag} depends on the question; a saved memory is read without one")
    if args.retention_html:
        if args.memory:
            parser.error("--retention-html maps a document as it is read; a saved memory holds no text (use --file)")
        for flag, value in (("--query-aware", args.query_aware), ("--truncate", args.truncate)):
            if value:
                parser.error(f"{flag}: not with --retention-html, which maps the document read without the question")
    if not args.question and not args.instruction and not args.save_memory and not args.retention_html:
        parser.error("generate needs --question or --instruction")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="namm", description="Neural Attention Memory Models for long documents")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer questions about a document with a forgetting memory")
    g.add_argument("--file", default=None, help="UTF-8 text file with the document")
    g.add_argument("--save-memory", metavar="PATH", default=None,
                   help="save the read document's memory to PATH (safetensors), to ask it later with --memory")
    g.add_argument("--memory-storage", default=None, choices=("float32", "float16", "bfloat16", "int8"),
                   help="with --save-memory: the dtype its keys and values are stored in (int8: per channel; "
                        "default: namm.memory_file.DEFAULT_STORAGE, docs/memories.md)")
    g.add_argument("--memory", metavar="PATH", default=None,
                   help="answer from a memory saved with --save-memory, without reading the document again")
    g.add_argument("--retention-html", metavar="PATH", default=None,
                   help="write an HTML page of the document with the text the memory forgot faded "
                        "(per token: the share of layers and KV heads that still hold it once it is read)")
    g.add_argument("--question", action="append", default=None,
                   help="question (repeat for several; the compressed document is reused)")
    g.add_argument("--instruction", default=None, help="instruction, e.g. 'Summarize the document.'")
    g.add_argument("--policy", default=None, choices=POLICY_NAMES,
                   help=f"memory policy (default: {DEFAULT_POLICY}, the shipped memory; with --memory, the one it was read with)")
    g.add_argument("--budget", type=_budget, default=None,
                   help="max kept fraction in (0, 1] (e.g. 0.3), or max tokens per layer and head: a whole "
                        "number above 1 or tokens=N (default: the policy's own)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=128)
    g.add_argument("--n-up", type=_positive_int, default=None, help="memory update interval in tokens (default 512)")
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
    if args.command == "generate":
        _check_generate(parser, args)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
