"""Build a pool of recorded prompts: `python -m namm.evolution pool --split train --n 500 ...`.

Prompts are drawn round-robin over tasks and lengths (deterministic per split and index), each
recorded once under the full cache (see `recording`), one file per prompt, so the pool grows
across sessions and machines and a stopped run resumes. `index.jsonl` lists every prompt with
whether the full cache answered it right; only those are used to train and to report.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from namm.tasks import make_sample, parse_lengths

DEFAULT_TASKS = ("passkey,niah_single,niah_multikey,niah_multivalue,doc_qa,doc_source,"
                 "code_constant,code_calls,code_returns")


def plan(tasks: list[str], lengths: list[int], n: int, start: int = 0) -> list[tuple[str, int, int]]:
    """(task, length, index) for prompt i of the pool: tasks and lengths cycle, indices grow."""
    combos = [(t, length) for length in lengths for t in tasks]
    return [(*combos[i % len(combos)], start + i // len(combos)) for i in range(n)]


def read_index(out: Path) -> list[dict]:
    path = out / "index.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build(lm, out: Path, split: str, tasks: list[str], lengths: list[int], n: int, rows: int, start: int = 0,
          log=print) -> list[dict]:
    from namm.evolution.recording import record_prompt

    out.mkdir(parents=True, exist_ok=True)
    done = {e["file"] for e in read_index(out)}
    for task, length, index in plan(tasks, lengths, n, start):
        name = f"{task}-{length}-{index:05d}.pt"
        if name in done:
            continue
        sample = make_sample(task, length, split, index)
        rec = record_prompt(lm, sample, rows=rows)
        rec.save(out / name)
        entry = {"file": name, "task": task, "length": length, "index": index, "split": split,
                 "tokens": rec.context_len, "correct": rec.correct, "prediction": rec.prediction,
                 "answer_log_prob": rec.answer_log_prob, "seconds": round(rec.seconds, 2)}
        with (out / "index.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
        log(f"{time.strftime('%H:%M:%S')} {name}: {rec.context_len} tokens, correct {rec.correct:.2f}, "
            f"{rec.seconds:.1f} s")
    return read_index(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="train")
    p.add_argument("--tasks", default=DEFAULT_TASKS)
    p.add_argument("--lengths", default="1024,1536,2048")
    p.add_argument("--n", type=int, default=500, help="prompts to record (solved or not)")
    p.add_argument("--start", type=int, default=0, help="first sample index")
    p.add_argument("--rows", type=int, default=128, help="recomputed window rows of the NAMM to record for")
    p.add_argument("--out", default=None, help="default runs/pool/<split>")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from namm import load_model

    out = Path(args.out or f"runs/pool/{args.split}")
    index = build(load_model(), out, args.split, args.tasks.split(","), parse_lengths(args.lengths), args.n,
                  args.rows, args.start)
    solved = sum(e["correct"] >= 1.0 for e in index)
    print(f"{len(index)} prompts recorded in {out}, {solved} answered right by the full cache")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
