"""How well the full cache answers each task: the reference every policy is normalised by.

    OMP_NUM_THREADS=1 python -m namm.tasks.reference_check --lengths 1k,2k,3k,4k --n 8 \\
        --split validation --families retrieval,doc_qa,code --out runs/refcheck.jsonl

Reads each prompt once with the full cache (exactly what ``namm.generate`` does with
``policy="full"``), then answers it with several decoding settings from a snapshot of the read
document, so the settings are compared on identical prompts at the cost of their decoding only.
Prints the score per task and length for every setting, and which task/length pairs the full
cache mostly gets right (mean >= ``--strong``). One JSON line per prompt goes to ``--out``; a
rerun with the same file skips the prompts already there (resume).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path

from namm.decoding import DEFAULT_DECODING, Decoding
from namm.tasks.base import available_tasks, get_task, make_sample
from namm.tasks.lengths import length_label, parse_lengths
from namm.tasks.metrics import score_answer

# the settings compared, named by what they add to plain greedy decoding
SETTINGS = {
    "plain": Decoding.plain(),
    "stop12": Decoding(stop_on_loop=12, stop_on_repeat=0),
    "stop12+rep4": Decoding(stop_on_loop=12, stop_on_repeat=4),
    "stop12+rp1.05": Decoding(repetition_penalty=1.05, stop_on_loop=12, stop_on_repeat=0),
    "stop12+rp1.1": Decoding(repetition_penalty=1.1, stop_on_loop=12, stop_on_repeat=0),
    "stop12+ng4": Decoding(no_repeat_ngram_size=4, stop_on_loop=12, stop_on_repeat=0),
    "stop12+ng8": Decoding(no_repeat_ngram_size=8, stop_on_loop=12, stop_on_repeat=0),
}
# compared by default: rp1.1 and ng4 cut numbers short on validation prompts at 1k (a
# penalised or banned repeated digit: "3681751" -> "368175", "1000000" -> "100001")
COMPARED = ("plain", "stop12", "stop12+rep4", "stop12+rp1.05", "stop12+ng8")


def default_setting(names: list[str]) -> str:
    """The compared setting that is today's DEFAULT_DECODING (else the first)."""
    return next((n for n in names if SETTINGS.get(n) == DEFAULT_DECODING), names[0])


def digest(sample) -> str:
    """Identifies a prompt's text, so a changed generator never reuses an old answer."""
    return hashlib.sha256(f"{sample.context}\x00{sample.question}".encode()).hexdigest()[:16]


def _step(lm, cache, token: int):
    import torch

    ids = torch.tensor([[token]], device=lm.device)
    return lm.model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]


def decode_settings(lm, cache, snap, q_ids, mnt: int, stop: set[int], settings: dict[str, Decoding]) -> dict:
    """Token ids per setting, as ``greedy_decode`` would give them after ``q_ids``.

    The plain greedy answer is decoded once, keeping the logits of every step; another setting
    replays those logits through its own guards and costs forwards only from the first token
    where it chooses differently (then the question and the shared answer prefix are read
    again from the snapshot ``snap`` of the document, in one batched forward)."""
    import torch

    from namm.decoding import answer_cut, next_token, token_words
    from namm.generate import greedy_decode, prefill

    cache.restore(snap)
    logits = prefill(lm, cache, q_ids)
    plain, rows = [], []
    while len(plain) < mnt:
        rows.append(logits)
        token = int(logits[0].argmax())
        if token in stop:
            break
        plain.append(token)
        if len(plain) == mnt:
            break
        logits = _step(lm, cache, token)
    words = token_words(getattr(lm, "tokenizer", None))
    result = {}
    for name, decoding in settings.items():
        procs, out = decoding.processors(), []
        for i, row in enumerate(rows):
            token = next_token(row, out, procs)
            if token in stop:
                break
            out.append(token)
            cut = answer_cut(out, decoding, words)
            if cut is not None:
                out = out[:cut]
                break
            if len(out) == mnt:
                break
            if i >= len(plain) or token != plain[i]:  # chose differently: decode on from here
                cache.restore(snap)
                with torch.no_grad():
                    logits = prefill(lm, cache, torch.cat([q_ids, torch.tensor([out])], dim=1))
                    out = greedy_decode(lm, cache, logits, mnt, stop, decoding, prefix=out)
                break
        result[name] = out
    return result


def answer_with_settings(lm, sample, settings: dict[str, Decoding]) -> dict:
    """The full cache's answer to ``sample`` under every setting, from one read of the document."""
    import torch

    from namm.generate import prefill
    from namm.memory import NammCache
    from namm.policies import make_policy
    from namm.prompts import encode_text, split_prompt, stop_token_ids

    tok = lm.tokenizer
    parts = split_prompt(tok, sample.context, sample.question)
    ctx, q = encode_text(tok, parts.context), encode_text(tok, parts.question)
    mnt = sample.meta["max_new_tokens"]
    cache = NammCache(lm.model.config, make_policy("full", None, model_name=lm.name), n_up=512)
    t0 = time.perf_counter()
    with torch.no_grad():
        prefill(lm, cache, ctx)
        cache.flush()
        snap = cache.snapshot()
        read = time.perf_counter() - t0
        ids = decode_settings(lm, cache, snap, q, mnt, stop_token_ids(tok), settings)
    out = {"tokens_in": ctx.shape[1] + q.shape[1], "seconds_read": round(read, 2),
           "seconds_decode": round(time.perf_counter() - t0 - read, 2), "answers": {}}
    for name, answer in ids.items():
        text = tok.decode(answer, skip_special_tokens=True).strip()
        out["answers"][name] = {"text": text, "score": score_answer(text, sample.answers, sample.metric),
                                "tokens": len(answer), "ids": answer}
    return out


def summarise(records: list[dict], settings: list[str], strong: float) -> str:
    """Markdown tables: the default setting's score per task and length, and each setting's mean."""
    cell: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        cell[(r["task"], r["length"])].append(r)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    lengths = sorted({r["length"] for r in records})
    ref = default_setting(settings)
    lines = [f"full-cache score ({ref} decoding), n prompts per cell; * = strong (>= {strong})", "",
             "| task | " + " | ".join(length_label(L) for L in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for t in tasks:
        row = []
        for L in lengths:
            rs = cell.get((t, L), [])
            if not rs:
                row.append("-")
                continue
            m = sum(r["answers"][ref]["score"] for r in rs) / len(rs)
            row.append(f"{m:.2f}{'*' if m >= strong else ''} ({len(rs)})")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    lines += ["", "decoding settings (mean over every prompt; tokens = mean answer length)", "",
              "| setting | " + " | ".join(tasks) + " | mean | tokens |", "|---|" + "---|" * (len(tasks) + 2)]
    for s in settings:
        per = []
        for t in tasks:
            rs = [r for r in records if r["task"] == t]
            per.append(sum(r["answers"][s]["score"] for r in rs) / len(rs))
        toks = sum(r["answers"][s]["tokens"] for r in records) / len(records)
        lines.append(f"| {s} | " + " | ".join(f"{v:.2f}" for v in per) + f" | {sum(per) / len(per):.3f} | {toks:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1k,2k,3k,4k")
    ap.add_argument("--n", type=int, default=8, help="prompts per task and length")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--families", default="retrieval,doc_qa,code")
    ap.add_argument("--tasks", default=None, help="task names (instead of --families)")
    ap.add_argument("--settings", default=",".join(COMPARED), help=f"of {', '.join(SETTINGS)}")
    ap.add_argument("--strong", type=float, default=0.7)
    ap.add_argument("--out", default="runs/refcheck.jsonl")
    ap.add_argument("--summary-only", action="store_true", help="print the tables of --out, run nothing")
    args = ap.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    fams = set(args.families.split(","))
    tasks = args.tasks.split(",") if args.tasks else [t for t in available_tasks() if get_task(t).family in fams]
    lengths = parse_lengths(args.lengths)
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    key = lambda r: (r["task"], r["length"], r["index"], r["digest"])  # noqa: E731
    have = {key(r) for r in done}
    if not args.summary_only:
        import torch

        from namm.models import load_model

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        lm = load_model()
        out.parent.mkdir(parents=True, exist_ok=True)
        for length in lengths:
            for task in tasks:
                for i in range(args.n):
                    s = make_sample(task, length, args.split, i)
                    rec = {"task": task, "length": length, "index": i, "split": args.split,
                           "digest": digest(s), "question": s.question, "answer": s.answer}
                    if key(rec) in have:
                        continue
                    rec.update(answer_with_settings(lm, s, {k: SETTINGS[k] for k in settings}))
                    done.append(rec)
                    with out.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    a = rec["answers"][settings[0]]
                    print(f"{task} {length} #{i} {a['score']:.2f} {a['text'][:70]!r} "
                          f"({rec['tokens_in']} tok, {rec['seconds_read']}s)", flush=True)
    keep = {(t, L) for t in tasks for L in lengths}
    # only the current prompts of the selected tasks and lengths (a reworded task starts afresh)
    current = {(t, L, i): digest(make_sample(t, L, args.split, i)) for t, L in keep for i in range(args.n)}
    records = [r for r in done if current.get((r["task"], r["length"], r["index"])) == r["digest"]
               and all(s in r["answers"] for s in settings)]
    if records:
        print(summarise(records, settings, args.strong))


if __name__ == "__main__":
    main()
