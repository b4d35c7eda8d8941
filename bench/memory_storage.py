"""Compact storage of saved memories: bytes on disk and held-out quality per storage dtype.

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory_storage.py --threads 1 --lengths 1k,2k --n-per-task 3 \\
        --reference-cache runs/storage-refs.json --json-out runs/memory-storage.jsonl

The prompts are the evaluation suite's own (namm.tasks.make_samples on the test split, indices
0..n-1 of every task at every length: the first n prompts per task and length, a fixed subset).
For each prompt: read its context once with the policy (default: the shipped one, at its own
budget) into a memory (`namm.read_document`), answer its question from that memory in RAM
(what `namm.generate` answers: the float32 reference), then save it in each storage
(`namm.save_memory(..., storage=)`), load it (`namm.load_memory`) and answer again. Answers are
scored with the suite's scoring (`namm.tasks.score_answer`) and normalised as the suite does
(`namm.evaluation.results.aggregate`: per task, score / the full cache's score on the same
prompts, then the mean over tasks; the full cache's answers come from the suite's reference
cache, computed when missing).

Prints one table: per storage the bytes on disk (summed over the prompts), their ratio to the
full cache's keys and values for the same tokens, the normalised score, its difference to
float32, and how many answers are token for token those of the float32 memory. Then the
storage the rule picks: the smallest whose normalised score is within --tolerance (0.01) of
float32's (storages of the same size, float16 and bfloat16, are told apart by score, then by
answers kept).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import namm
from namm.evaluation.references import ReferenceCache, reference_key, reference_model_name
from namm.evaluation.results import SampleResult, aggregate
from namm.evaluation.runner import DEFAULT_MAX_NEW_TOKENS
from namm.memory_file import STORAGES
from namm.spec import DEFAULT_POLICY
from namm.tasks import make_samples, parse_lengths, score_answer

MiB = 2**20
TASKS = "niah_single,passkey,niah_multikey,doc_qa,code_constant,code_calls,code_returns"
N_UP = 512


def _reference(lm, sample, mnt: int, refs: ReferenceCache):
    """The full cache's answer and score on `sample`, as the suite computes and caches it."""
    from namm.evaluation.runner import _generate

    key = reference_key(reference_model_name(lm), sample, mnt, False, N_UP)
    ref = refs.get(key)
    if ref is None:
        ref = _generate(lm, sample, "full", None, mnt, False, N_UP, False)
        refs.put(key, ref)
    return ref


def run_sample(lm, sample, policy: str, budget, storages, refs: ReferenceCache, folder: str) -> dict:
    mnt = sample.meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    ref = _reference(lm, sample, mnt, refs)
    t0 = time.perf_counter()
    memory = namm.read_document(lm, sample.context, policy=policy, budget=budget, n_up=N_UP)
    row = {"task": sample.task, "length": sample.meta["length"], "index": sample.meta["index"],
           "tokens": memory.tokens, "kv_bytes": memory.kv_bytes, "full_kv_bytes": memory.full_kv_bytes,
           "kept_fraction": memory.kv_bytes / memory.full_kv_bytes, "read_s": time.perf_counter() - t0,
           "full_prediction": ref.prediction, "full_score": ref.score, "storages": {}}
    ram = namm.ask(lm, memory, sample.question, max_new_tokens=mnt).text
    row["ram"] = {"prediction": ram, "score": score_answer(ram, sample.answers, sample.metric)}
    for storage in storages:
        path = os.path.join(folder, f"{storage}.mem")
        namm.save_memory(memory, path, storage=storage)
        size = os.path.getsize(path)
        text = namm.ask(lm, namm.load_memory(lm, path), sample.question, max_new_tokens=mnt).text
        row["storages"][storage] = {"bytes": size, "prediction": text,
                                    "score": score_answer(text, sample.answers, sample.metric)}
        os.unlink(path)
    return row


def summarise(rows: list[dict], storages, tolerance: float) -> tuple[list[dict], str | None]:
    full_bytes = sum(r["full_kv_bytes"] for r in rows)
    table = []
    for storage in storages:
        results = [SampleResult(r["task"], r["length"], r["index"], r["storages"][storage]["prediction"],
                                r["storages"][storage]["score"], r["full_prediction"], r["full_score"])
                   for r in rows]
        rec = aggregate(storage, None, False, results)
        size = sum(r["storages"][storage]["bytes"] for r in rows)
        same = sum(r["storages"][storage]["prediction"] == r["ram"]["prediction"] for r in rows)
        table.append({"storage": storage, "bytes": size, "ratio": size / full_bytes, "normalised": rec.normalised,
                      "score": rec.score, "same": same, "n": len(rows)})
    base = next((t for t in table if t["storage"] == "float32"), None)
    for t in table:
        t["delta"] = None if base is None or t["normalised"] is None else t["normalised"] - base["normalised"]
    ok = [t for t in table if t["delta"] is not None and t["delta"] >= -tolerance]
    if not ok:
        return table, None
    # the smallest; storages within 1% of its bytes (float16 and bfloat16) tie, and the one that
    # scores higher, then keeps more answers of float32, wins
    least = min(t["bytes"] for t in ok)
    tied = [t for t in ok if t["bytes"] <= 1.01 * least]
    return table, max(tied, key=lambda t: (t["normalised"], t["same"]))["storage"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--lengths", default="1k,2k")
    parser.add_argument("--n-per-task", type=int, default=3, help="the first N prompts of each task and length")
    parser.add_argument("--split", default="test")
    parser.add_argument("--policy", default=DEFAULT_POLICY)
    parser.add_argument("--budget", type=float, default=None, help="default: the policy's own")
    parser.add_argument("--storages", default=",".join(STORAGES))
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--reference-cache", default=None, help="JSON file keeping the full cache's answers")
    parser.add_argument("--json-out", default=None, help="per-prompt records (JSON lines), written as they finish")
    parser.add_argument("--resume", action="store_true", help="skip prompts already in --json-out")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    storages = args.storages.split(",")
    if "float32" not in storages:
        parser.error("--storages must include float32, the reference")
    lm = namm.load_model(args.model)
    samples = make_samples(args.tasks.split(","), parse_lengths(args.lengths), args.n_per_task, args.split)
    refs = ReferenceCache(args.reference_cache)
    rows: list[dict] = []
    done = set()
    if args.json_out and args.resume and Path(args.json_out).exists():
        rows = [json.loads(line) for line in Path(args.json_out).read_text().splitlines() if line.strip()]
        done = {(r["task"], r["length"], r["index"]) for r in rows}
    out = open(args.json_out, "a" if args.resume else "w") if args.json_out else None
    print(f"model {lm.name}, torch threads {torch.get_num_threads()}, policy {args.policy}, split {args.split}, "
          f"{len(samples)} prompts ({args.tasks} at {args.lengths}, the first {args.n_per_task} of each)",
          file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for i, sample in enumerate(samples):
            if (sample.task, sample.meta["length"], sample.meta["index"]) in done:
                continue
            row = run_sample(lm, sample, args.policy, args.budget, storages, refs, folder)
            rows.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
            scores = " ".join(f"{s}={row['storages'][s]['score']:.2f}" for s in storages)
            print(f"[{i + 1}/{len(samples)}] {sample.task}@{sample.meta['length']}#{sample.meta['index']} "
                  f"full={row['full_score']:.2f} ram={row['ram']['score']:.2f} {scores} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if out:
        out.close()
    table, choice = summarise(rows, storages, args.tolerance)
    full_mib = sum(r["full_kv_bytes"] for r in rows) / MiB
    kept = sum(r["kv_bytes"] for r in rows) / MiB
    print(f"{len(rows)} prompts, {sum(r['tokens'] for r in rows)} tokens read; full cache KV {full_mib:.1f} MiB, "
          f"the memories' KV in RAM {kept:.1f} MiB ({kept / full_mib:.1%}); full-cache score "
          f"{sum(r['full_score'] for r in rows) / len(rows):.3f}")
    print(f"{'storage':<10}{'MiB on disk':>12}{'/ full KV':>10}{'normalised':>11}{'delta':>8}{'mean score':>11}"
          f"{'same answers':>14}")
    for t in table:
        norm = "-" if t["normalised"] is None else f"{t['normalised']:.3f}"
        delta = "-" if t["delta"] is None else f"{t['delta']:+.3f}"
        print(f"{t['storage']:<10}{t['bytes'] / MiB:>12.2f}{t['ratio']:>10.1%}{norm:>11}{delta:>8}{t['score']:>11.3f}"
              f"{t['same']:>9}/{t['n']}")
    print(f"smallest within {args.tolerance} of float32: {choice}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
