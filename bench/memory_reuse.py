"""Document memories: what a saved memory weighs against a full cache, and what a follow-up
question costs from a loaded memory against reading the document again.

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory_reuse.py --threads 1 --tokens 4096
    OMP_NUM_THREADS=1 .venv/bin/python bench/memory_reuse.py --threads 1 --tokens 16384 --policies none \
        --question "Summarize what this code does."

For each policy of --policies (none: skip this table): read a document of real text (Python
standard-library sources) once (`namm.read_document`), save it (`namm.save_memory`, float32:
exact), then answer one question (--question) two ways: load the memory and ask
(`namm.load_memory` + `namm.ask`), and `namm.generate` on the document text, which reads it
again. Prints one table: the KV bytes the memory keeps, the full cache's bytes for the
same tokens, the file's bytes on disk, and the seconds of each step; `same` says whether both
ways gave the same answer (they must). The model's weight hash, which the first load in a
process computes (once per model), is timed on its own line.

Then the follow-up table, for the shipped policy (--follow-up-policy): read the document once
(first read), save the memory in each storage of --storages, and time a follow-up question from
disk (load + ask) and from RAM (ask again on the memory already loaded), against the same
question re-reading the document with the shipped policy and with the full cache
(`namm.generate`). The issue's targets are printed with each figure: stored bytes <= 30% of
the full cache (<= 15% compact), a follow-up from a stored memory >= 20x faster than re-reading
with the shipped policy and >= 40x faster than the full cache. Past the model's context window
(SmolLM2: 8192 tokens) the full cache cannot answer; its re-read is still timed (the context
limit lifted, --full-past-context, default on) since that is the work a model with a longer
window does, and its answer is not compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import torch

import namm
from namm.bench import real_text_ids
from namm.memory_file import DEFAULT_STORAGE, STORAGES
from namm.spec import DEFAULT_POLICY

MiB = 2**20
QUESTION = "Which module does this code import first?"


def _row(lm, document: str, policy: str, budget, max_new_tokens: int, folder: str,
         question: str = QUESTION) -> dict:
    t0 = time.perf_counter()
    memory = namm.read_document(lm, document, policy=policy, budget=budget)
    t_read = time.perf_counter() - t0
    path = os.path.join(folder, f"{policy}.mem")
    t0 = time.perf_counter()
    namm.save_memory(memory, path, storage="float32")  # exact: the answers must be the same
    t_save = time.perf_counter() - t0
    kept, full, tokens = memory.kv_bytes, memory.full_kv_bytes, memory.tokens
    del memory
    t0 = time.perf_counter()
    loaded = namm.load_memory(lm, path)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    asked = namm.ask(lm, loaded, question, max_new_tokens=max_new_tokens)
    t_ask = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = namm.generate(lm, document, question, policy=policy, budget=budget, max_new_tokens=max_new_tokens)
    t_again = time.perf_counter() - t0
    return {"policy": policy, "budget": loaded.policy.budget, "tokens": tokens, "kept": kept, "full": full,
            "file": os.path.getsize(path), "read": t_read, "save": t_save, "load": t_load, "ask": t_ask,
            "again": t_again, "out": asked.stats.tokens_out, "same": asked.answers == again.answers,
            "answer": asked.text}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def follow_up(lm, document: str, policy: str, storages: list[str], max_new_tokens: int, folder: str,
              full_past_context: bool, question: str = QUESTION, positions: str = "original") -> dict:
    """The follow-up figures of one document (module docstring)."""
    memory, t_read = _timed(lambda: namm.read_document(lm, document, policy=policy, positions=positions))
    out = {"policy": policy, "budget": memory.policy.budget, "tokens": memory.tokens, "kept": memory.kv_bytes,
           "full": memory.full_kv_bytes, "read": t_read, "storages": []}
    ram_answer = namm.ask(lm, memory, question, max_new_tokens=max_new_tokens).answers
    out["answer"] = ram_answer[0]
    for storage in storages:  # saving leaves the memory as it was: each storage saves the same one
        path = os.path.join(folder, f"follow-up.{storage}.mem")
        _, t_save = _timed(lambda: namm.save_memory(memory, path, storage=storage))
        loaded, t_load = _timed(lambda: namm.load_memory(lm, path))
        first, t_ask = _timed(lambda: namm.ask(lm, loaded, question, max_new_tokens=max_new_tokens))
        again, t_ram = _timed(lambda: namm.ask(lm, loaded, question, max_new_tokens=max_new_tokens))
        out["storages"].append({"storage": storage, "file": os.path.getsize(path), "save": t_save, "load": t_load,
                                "ask": t_ask, "ram": t_ram, "out": first.stats.tokens_out, "answer": first.text,
                                "same": first.answers == ram_answer and again.answers == first.answers})
        os.unlink(path)
        del loaded
    del memory
    reread, out["reread"] = _timed(lambda: namm.generate(lm, document, question, policy=policy,
                                                         max_new_tokens=max_new_tokens, positions=positions))
    out["reread_same"] = reread.answers == ram_answer
    full_lm = lm
    out["full_in_context"] = out["tokens"] + 64 + max_new_tokens <= lm.max_context
    if not out["full_in_context"]:
        if not full_past_context:
            out["reread_full"] = None
            return out
        full_lm = dataclasses.replace(lm, max_context=10**9)  # the same weights; only the check is lifted
    _, out["reread_full"] = _timed(lambda: namm.generate(full_lm, document, question, policy="full",
                                                         max_new_tokens=max_new_tokens))
    return out


def print_follow_up(f: dict) -> None:
    full = f["full"]
    print(f"\nfollow-up: {f['policy']} (budget {f['budget']}), {f['tokens']} tokens read in {f['read']:.2f} s (first "
          f"read); KV kept {f['kept'] / MiB:.2f} MiB of the full cache's {full / MiB:.2f} MiB "
          f"({f['kept'] / full:.1%})")
    print(f"re-read + ask: {f['policy']} {f['reread']:.2f} s (answer {'same' if f['reread_same'] else 'DIFFERENT'}), "
          f"full cache " + ("not run" if f["reread_full"] is None else f"{f['reread_full']:.2f} s")
          + ("" if f["full_in_context"] else " (past the model's context: timed only, the answer is meaningless)"))
    print(f"{'storage':<10}{'file MiB':>9}{'file/full':>10}{'target':>8}{'save s':>7}{'load s':>7}{'ask s':>7}"
          f"{'disk s':>7}{'RAM s':>7}{'re-read/disk':>13}{'>=20x':>6}{'full/disk':>10}{'>=40x':>6}"
          f"{'re-read/RAM':>12}{'full/RAM':>9}{'same':>6}{'out':>5}")
    for s in f["storages"]:
        ratio = s["file"] / full
        target = 0.30 if s["storage"] == "float32" else 0.15
        disk = s["load"] + s["ask"]
        vs_full = "-" if f["reread_full"] is None else f"{f['reread_full'] / disk:.1f}x"
        vs_full_ok = "-" if f["reread_full"] is None else ("yes" if f["reread_full"] / disk >= 40 else "NO")
        ram_full = "-" if f["reread_full"] is None else f"{f['reread_full'] / s['ram']:.1f}x"
        print(f"{s['storage']:<10}{s['file'] / MiB:>9.2f}{ratio:>10.1%}{('<=' + format(target, '.0%')):>8}"
              f"{s['save']:>7.2f}{s['load']:>7.2f}{s['ask']:>7.2f}{disk:>7.2f}{s['ram']:>7.2f}"
              f"{f['reread'] / disk:>12.1f}x{('yes' if f['reread'] / disk >= 20 else 'NO'):>6}{vs_full:>10}"
              f"{vs_full_ok:>6}{f['reread'] / s['ram']:>11.1f}x{ram_full:>9}{('yes' if s['same'] else 'no'):>6}"
              f"{s['out']:>5}")
    print("same: the follow-up's answer is token for token the RAM memory's (float32 must be; a compact "
          "storage may differ); out: the answer's tokens (the ask's seconds grow with them)")
    print(f"answers: {f['policy']} from RAM {f['answer'][:80]!r}" + "".join(
        f"; {s['storage']} {s['answer'][:80]!r}" for s in f["storages"] if not s["same"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="document length in tokens (real text)")
    parser.add_argument("--policies", default="surprisal,full,snapkv,streaming_llm",
                        help="policies of the first table; 'none' skips it")
    parser.add_argument("--follow-up-policy", default=DEFAULT_POLICY, help="'none' skips the follow-up table")
    parser.add_argument("--storages", default=",".join(dict.fromkeys(["float32", DEFAULT_STORAGE, "int8"])),
                        help=f"storages of the follow-up table ({', '.join(STORAGES)})")
    parser.add_argument("--no-full-past-context", dest="full_past_context", action="store_false",
                        help="do not time the full cache past the model's context window")
    parser.add_argument("--budget", type=float, default=None,
                        help="budget of the baselines (default: each policy's own; surprisal: its checkpoint's)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--positions", default="original", choices=("original", "reindexed", "auto"),
                        help="the follow-up memory's RoPE positions (namm.generate's option)")
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
          f"question {args.question!r} + {args.max_new_tokens} new tokens at most; weight + tokenizer hash "
          f"{time.perf_counter() - t0:.2f} s (once per process)")
    rows = []
    policies = [] if args.policies == "none" else args.policies.split(",")
    follow = None
    with tempfile.TemporaryDirectory() as folder:
        for policy in policies:
            budget = None if policy in ("surprisal", "namm", "full") else args.budget
            rows.append(_row(lm, document, policy, budget, args.max_new_tokens, folder, args.question))
        if args.follow_up_policy != "none":
            follow = follow_up(lm, document, args.follow_up_policy, args.storages.split(","), args.max_new_tokens,
                               folder, args.full_past_context, args.question, args.positions)
    head = (f"{'policy':<14}{'budget':>7}{'tokens':>7}{'KV MiB':>8}{'full MiB':>9}{'file MiB':>9}{'file/full':>10}"
            f"{'read s':>8}{'save s':>7}{'load s':>7}{'ask s':>7}{'load+ask':>9}{'re-read+ask':>12}{'speed-up':>9}"
            f"{'same':>6}")
    if rows:
        print(head)
    for r in rows:
        loaded = r["load"] + r["ask"]
        print(f"{r['policy']:<14}{str(r['budget']):>7}{r['tokens']:>7}{r['kept'] / MiB:>8.2f}{r['full'] / MiB:>9.2f}"
              f"{r['file'] / MiB:>9.2f}{r['file'] / r['full']:>10.1%}{r['read']:>8.2f}{r['save']:>7.2f}"
              f"{r['load']:>7.2f}{r['ask']:>7.2f}{loaded:>9.2f}{r['again']:>12.2f}{r['again'] / loaded:>8.1f}x"
              f"{'yes' if r['same'] else 'NO':>6}")
    for r in rows:
        print(f"{r['policy']}: {r['out']} tokens: {r['answer'][:100]!r}")
    if follow is not None:
        print_follow_up(follow)
    exact = [s for s in (follow or {}).get("storages", []) if s["storage"] == "float32"]
    return 0 if all(r["same"] for r in rows) and all(s["same"] for s in exact) else 1


if __name__ == "__main__":
    raise SystemExit(main())
