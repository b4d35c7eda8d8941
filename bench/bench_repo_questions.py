"""Whole-repository questions: a code base far longer than the model's context streamed through
the model with the memory bounding the cache, against the full cache in chunks; and a needle
placed beyond the trained context, read with and without position interpolation.

    # a needle past 8k tokens: original RoPE positions, linear interpolation (namm/positions.py),
    # positions re-indexed within the kept cache (namm/memory.py, what namm.generate does there)
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_repo_questions.py --mode needle --threads 1 \\
        --length 12000 --depths 8600,10000,11400
    # the `email`, `json`, `http` and `logging` packages of the standard library (204k tokens),
    # ten questions whose answers are in the code (email, json): surprisal at 25% (one pass, one
    # compressed cache for every question) vs the full cache in chunks of 7.5k tokens (every
    # chunk asked every question); --packages json runs the json questions on json alone
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_repo_questions.py --mode repo --threads 1

The chunked full cache counts a question as answered if *any* chunk's answer holds the expected
string: an upper bound for it (a real map-reduce would still have to pick that answer). Tables
print tokens read per second, peak KV bytes, wall time, and the answers.
"""
from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

import torch

import namm
from namm.positions import position_interpolation
from namm.spec import Budget

STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUESTIONS = [  # (package, question, expected substring): answers stated in the code
    ("json", "Which exception class does json raise when a document is not valid JSON?",
     "JSONDecodeError"),
    ("json", "Which class does json.dumps use by default to encode Python objects?",
     "JSONEncoder"),
    ("json", "Which function in json.scanner builds the scanner?", "make_scanner"),
    ("email", "What is the value of DEFAULT_CHARSET in email.charset?", "us-ascii"),
    ("email", "Which function in email.utils formats a date for an email header?", "formatdate"),
    ("email", "What is the value of MAXLINELEN in email.header?", "78"),
    ("email", "What is the base class of the email package's exceptions?", "MessageError"),
    ("email", "Which class in email.parser parses messages from bytes?", "BytesParser"),
    ("email", "Which class in email.feedparser implements the incremental parser?", "FeedParser"),
    ("json", "Which C accelerator module does json try to import?", "_json"),
]
NEEDLE = "\n# Deployment note: the secret deployment code of this repository is 80417.\n"
NEEDLE_QUESTION = "What is the secret deployment code of this repository?"
NEEDLE_ANSWER = "80417"


def repository_text(packages: list[str]) -> str:
    """The packages' Python sources, each file under a `File:` header, in path order."""
    parts = []
    for package in packages:
        for path in sorted((STDLIB / package).rglob("*.py")):
            rel = path.relative_to(STDLIB)
            parts.append(f"File: {rel}\n\n{path.read_text(encoding='utf-8', errors='replace')}\n")
    return "\n".join(parts)


SCHEMES = ("original", "interpolated", "reindexed")


def run(lm, context: str, questions: list[str], policy: str, budget, *, scheme: str,
        max_new_tokens: int) -> tuple[list[str], dict, float]:
    """`scheme`: original positions, linear interpolation (namm/positions.py), or positions
    re-indexed within the kept cache (namm/memory.py)."""
    total = len(lm.tokenizer(context)["input_ids"]) + 200 + max_new_tokens
    t0 = time.perf_counter()
    factor = 1.0
    positions = "reindexed" if scheme == "reindexed" else "original"
    if scheme == "interpolated":
        with position_interpolation(lm, total) as factor:
            result = namm.generate(lm, context, questions, policy=policy, budget=budget,
                                   max_new_tokens=max_new_tokens, positions=positions)
    else:
        result = namm.generate(lm, context, questions, policy=policy, budget=budget,
                               max_new_tokens=max_new_tokens, positions=positions)
    wall = time.perf_counter() - t0
    stats = result.to_dict()
    stats["factor"] = factor
    return list(result.answers), stats, wall


def needle(lm, args) -> None:
    base = repository_text(["email", "json"])
    ids = lm.tokenizer(base)["input_ids"][: args.length]
    print(f"haystack: {len(ids)} tokens of email+json sources; model context {lm.max_context}")
    print("| needle at token | policy | positions | factor | answer | found | s |")
    print("|---|---|---|---|---|---|---|")
    for depth in [int(d) for d in args.depths.split(",")]:
        text = (lm.tokenizer.decode(ids[:depth]) + NEEDLE + lm.tokenizer.decode(ids[depth:]))
        for policy in args.policies.split(","):
            for scheme in args.schemes.split(","):
                answers, stats, wall = run(lm, text, [NEEDLE_QUESTION], policy,
                                           Budget.parse_text(args.budget), scheme=scheme,
                                           max_new_tokens=16)
                found = NEEDLE_ANSWER in answers[0]
                label = policy if policy == "full" else f"{policy} {budget_label(Budget.parse_text(args.budget))}"
                print(f"| {depth} | {label} | "
                      f"{scheme} | {stats['factor']:.2f} | "
                      f"{answers[0][:60]!r} | {'yes' if found else 'no'} | {wall:.0f} |",
                      flush=True)


def chunks_of(lm, text: str, size: int) -> list[str]:
    ids = lm.tokenizer(text)["input_ids"]
    return [lm.tokenizer.decode(ids[i: i + size]) for i in range(0, len(ids), size)]


def repo(lm, args) -> None:
    packages = args.packages.split(",")
    global QUESTIONS
    QUESTIONS = [(q, exp) for package, q, exp in QUESTIONS if package in packages]
    text = repository_text(packages)
    n_tokens = len(lm.tokenizer(text)["input_ids"])
    print(f"repository: {args.packages} from {STDLIB}: {n_tokens} tokens, {len(text)} chars")
    questions = [q for q, _ in QUESTIONS]
    rows = []
    budget = Budget.parse_text(args.budget)
    answers, stats, wall = run(lm, text, questions, "surprisal", budget,
                               scheme=args.positions, max_new_tokens=args.max_new_tokens)
    rows.append((f"surprisal {budget_label(budget)}, one pass ({args.positions} positions)", n_tokens,
                 stats["kv_bytes_peak"], wall, answers, [[a] for a in answers]))
    print(f"surprisal done in {wall:.0f} s, kept {stats.get('kept_fraction')}", flush=True)
    for (q, exp), answer in zip(QUESTIONS, answers):
        print(f"  {exp in answer!s:5} {exp!r:20} {answer[:70]!r}", flush=True)
    if args.skip_chunks:
        rows_table(rows)
        return
    per_chunk: list[list[str]] = [[] for _ in questions]
    peak, t0 = 0, time.perf_counter()
    for piece in chunks_of(lm, text, args.chunk):
        got, stats, _ = run(lm, piece, questions, "full", None, scheme="original",
                            max_new_tokens=args.max_new_tokens)
        peak = max(peak, stats["kv_bytes_peak"])
        for i, answer in enumerate(got):
            per_chunk[i].append(answer)
    wall = time.perf_counter() - t0
    print(f"chunks done in {wall:.0f} s", flush=True)
    best = [next((a for a in answers_i if exp in a), answers_i[0])
            for answers_i, (_, exp) in zip(per_chunk, QUESTIONS)]
    rows.append((f"full cache, chunks of {args.chunk} (any chunk)", n_tokens, peak, wall, best,
                 per_chunk))
    rows_table(rows)


def budget_label(budget: Budget) -> str:
    return f"{budget.value:.0%}" if budget.unit == "fraction" else f"{budget.value} tokens"


def rows_table(rows) -> None:
    print("\n| setting | tokens | tokens/s | peak KV bytes | wall s | correct |")
    print("|---|---|---|---|---|---|")
    for name, tokens, kv, wall, _, candidates in rows:
        correct = sum(any(exp in a for a in cand) for cand, (_, exp) in zip(candidates, QUESTIONS))
        print(f"| {name} | {tokens} | {tokens / wall:.0f} | {kv} | {wall:.0f} | "
              f"{correct}/{len(QUESTIONS)} |")
    print("\n| question | expected | " + " | ".join(r[0] for r in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for i, (q, exp) in enumerate(QUESTIONS):
        cells = [repr(r[4][i][:50]) for r in rows]
        print(f"| {q} | {exp} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("needle", "repo"), default="needle")
    parser.add_argument("--threads", type=int, default=1)
    # a fraction of the tokens read ('0.25') or a token count ('tokens=2048'): a fraction grows
    # with the input (25% of 204k is a 51k cache, past the 8k trained context); a token count
    # keeps the cache, the cost per token and the re-indexed positions bounded
    parser.add_argument("--budget", default="0.25")
    parser.add_argument("--skip-chunks", action="store_true", help="repo mode: surprisal only")
    parser.add_argument("--length", type=int, default=12000)
    parser.add_argument("--depths", default="8600,10000,11400")
    parser.add_argument("--policies", default="surprisal,streaming_llm")
    # email + json + http + logging: 204k tokens with SmolLM2's tokenizer (email + json: 109k)
    parser.add_argument("--packages", default="email,json,http,logging")
    parser.add_argument("--positions", choices=SCHEMES, default="reindexed")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help="needle mode")
    parser.add_argument("--chunk", type=int, default=7500)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = namm.load_model()
    print(f"model {lm.name}, {torch.get_num_threads()} thread(s)")
    t0 = time.perf_counter()
    (needle if args.mode == "needle" else repo)(lm, args)
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
