"""Document memories: what a saved memory weighs against a full cache, and what a follow-up
question costs from a loaded memory against reading the document again.

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory_reuse.py --threads 1 --tokens 4096

For each policy: read a document of real text (Python standard-library sources) once
(`namm.read_document`), save it (`namm.save_memory`), then answer one question two ways: load the
memory and ask (`namm.load_memory` + `namm.ask`), and `namm.generate` on the document text, which
reads it again. Prints one table: the KV bytes the memory keeps, the full cache's bytes for the
same tokens, the file's bytes on disk, and the seconds of each step; `same` says whether both
ways gave the same answer (they must). The model's weight hash, which the first load in a
process computes (once per model), is timed on its own line.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import namm
from namm.bench import real_text_ids

MiB = 2**20
QUESTION = "Which module does this code import first?"


def _row(lm, document: str, policy: str, budget, max_new_tokens: int, folder: str) -> dict:
    t0 = time.perf_counter()
    memory = namm.read_document(lm, document, policy=policy, budget=budget)
    t_read = time.perf_counter() - t0
    path = os.path.join(folder, f"{policy}.mem")
    t0 = time.perf_counter()
    namm.save_memory(memory, path)
    t_save = time.perf_counter() - t0
    kept, full, tokens = memory.kv_bytes, memory.full_kv_bytes, memory.tokens
    del memory
    t0 = time.perf_counter()
    loaded = namm.load_memory(lm, path)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    asked = namm.ask(lm, loaded, QUESTION, max_new_tokens=max_new_tokens)
    t_ask = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = namm.generate(lm, document, QUESTION, policy=policy, budget=budget, max_new_tokens=max_new_tokens)
    t_again = time.perf_counter() - t0
    return {"policy": policy, "budget": loaded.policy.budget, "tokens": tokens, "kept": kept, "full": full,
            "file": os.path.getsize(path), "read": t_read, "save": t_save, "load": t_load, "ask": t_ask,
            "again": t_again, "out": asked.stats.tokens_out, "same": asked.answers == again.answers,
            "answer": asked.text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="document length in tokens (real text)")
    parser.add_argument("--policies", default="surprisal,full,snapkv,streaming_llm")
    parser.add_argument("--budget", type=float, default=None,
                        help="budget of the baselines (default: each policy's own; surprisal: its checkpoint's)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--model", default=None, help="local Hugging Face checkpoint (default: SmolLM2-135M)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = namm.load_model(args.model)
    document = lm.tokenizer.decode(real_text_ids(lm.tokenizer, args.tokens)[0])
    t0 = time.perf_counter()
    _ = lm.weights_sha256, lm.tokenizer_sha256
    print(f"model {lm.name}, torch threads {torch.get_num_threads()}, document {args.tokens} tokens, "
          f"question + {args.max_new_tokens} new tokens at most; weight + tokenizer hash "
          f"{time.perf_counter() - t0:.2f} s (once per process)")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for policy in args.policies.split(","):
            budget = None if policy in ("surprisal", "namm", "full") else args.budget
            rows.append(_row(lm, document, policy, budget, args.max_new_tokens, folder))
    head = (f"{'policy':<14}{'budget':>7}{'tokens':>7}{'KV MiB':>8}{'full MiB':>9}{'file MiB':>9}{'file/full':>10}"
            f"{'read s':>8}{'save s':>7}{'load s':>7}{'ask s':>7}{'load+ask':>9}{'re-read+ask':>12}{'speed-up':>9}"
            f"{'same':>6}")
    print(head)
    for r in rows:
        loaded = r["load"] + r["ask"]
        print(f"{r['policy']:<14}{str(r['budget']):>7}{r['tokens']:>7}{r['kept'] / MiB:>8.2f}{r['full'] / MiB:>9.2f}"
              f"{r['file'] / MiB:>9.2f}{r['file'] / r['full']:>10.1%}{r['read']:>8.2f}{r['save']:>7.2f}"
              f"{r['load']:>7.2f}{r['ask']:>7.2f}{loaded:>9.2f}{r['again']:>12.2f}{r['again'] / loaded:>8.1f}x"
              f"{'yes' if r['same'] else 'NO':>6}")
    for r in rows:
        print(f"{r['policy']}: {r['out']} tokens: {r['answer'][:100]!r}")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
