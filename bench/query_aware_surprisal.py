"""Why a question read first could change what a surprisal memory keeps: the needle's surprisal
and whether the shipped `surprisal` memory keeps it, with the question before the document and
without, side by side on the same test prompts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/query_aware_surprisal.py --n 13

For each prompt the document part is read once under the full cache in each mode; the table
gives, per mode, the needle sentence's key words (the sentence without its answer) and answer
tokens: mean surprisal (nats), mean percentile of their pooled score among the document's
tokens (100 = the most surprising), and the share of them the shipped memory keeps at its
budget, replayed on the real schedule (an update every 512 tokens and the flush at the end, as
namm.generate reads a document: namm.evolution.surprisal_search.replay_keep).
"""
from __future__ import annotations

import argparse
import json

import torch


def needle_spans(tok, text: str, answer: str) -> tuple[list[int], list[int]]:
    """Token indices of the answer and of the rest of its sentence ("The special magic number
    for sharp-wizard is:") in `text`, from the tokenizer's character offsets."""
    at = text.find(answer)
    start = max(text.rfind(". ", 0, at) + 2, text.rfind("\n", 0, at) + 1)
    end = at + len(answer)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    value = [i for i, (a, b) in enumerate(offsets) if a < end and b > at]
    key = [i for i, (a, b) in enumerate(offsets) if a < at and b > start and i not in value]
    return key, value


def measure(lm, policy, sample, query_aware: bool) -> dict:
    from namm.evolution.surprisal_search import replay_keep
    from namm.policies.base import UpdateContext
    from namm.prompts import encode_text, split_prompt
    from namm.surprisal import SurprisalLog

    tok = lm.tokenizer
    context = split_prompt(tok, sample.context, sample.question, None, query_aware=query_aware).context
    ids = encode_text(tok, context)
    if ids.shape[1] != len(tok(context, add_special_tokens=False)["input_ids"]):
        raise ValueError("the offsets do not match the ids the memory reads")
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits
    log = SurprisalLog()
    log.record(ids, logits)
    t = ids.shape[1]
    positions = torch.arange(t)[None, None]
    ctx = UpdateContext(layer_idx=0, keys=None, values=None, positions=positions,
                        valid=torch.ones_like(positions, dtype=torch.bool), seen=t, n_new=t,
                        surprisal=log.values, token_ids=ids)
    pooled = policy.pooled_surprisal(ctx)[0, 0]  # the score over the whole document
    keep = replay_keep(policy, log.values[0], n_up=512, token_ids=ids)
    doc_start = context.find(sample.context.strip())
    first_doc = len(tok(context[:doc_start], add_special_tokens=False)["input_ids"])
    doc = pooled[first_doc:]
    key, value = needle_spans(tok, context, sample.answers[0])

    def stats(span: list[int]) -> dict:
        idx = torch.tensor(span)
        pct = [float((doc < pooled[i]).float().mean()) * 100 for i in span]
        return {"surprisal": float(log.values[0, idx].mean()), "percentile": sum(pct) / len(pct),
                "kept": float(keep[idx].float().mean())}

    return {"key": stats(key), "value": stats(value)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="niah_single,niah_multikey,doc_qa")
    p.add_argument("--lengths", default="1k")
    p.add_argument("--n", type=int, default=13)
    p.add_argument("--split", default="test")
    p.add_argument("--set", default="", help="settings of the shipped memory replaced, e.g. "
                   "surprise=1,surprise_pool=1 (one token's own surprisal, no pooling); SurprisalPolicy.TUNABLE")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    from namm import load_model
    from namm.checkpoints import default_checkpoint
    from namm.policies.surprisal import SurprisalPolicy
    from namm.tasks import make_samples, parse_lengths

    lm = load_model()
    overrides = dict(pair.split("=", 1) for pair in args.set.split(",") if pair)
    policy = SurprisalPolicy.variant(default_checkpoint(None), overrides, model_name=lm.name)
    samples = make_samples(args.tasks.split(","), parse_lengths(args.lengths), args.n, args.split)
    rows = []
    for s in samples:
        for mode in (False, True):
            rows.append({"task": s.task, "index": s.meta["index"], "query_aware": mode, **measure(lm, policy, s, mode)})
    print(f"{len(samples)} prompts ({args.tasks}, {args.lengths}, {args.split}); the shipped surprisal memory"
          f"{' with ' + args.set if args.set else ''}: views {policy.surprise_mix}, budget {policy.budget}")
    print(f"{'task':<14} {'mode':<9} {'part':<6} {'surprisal':>9} {'percentile':>10} {'kept':>6}")
    for task in [*args.tasks.split(","), "all"]:
        for mode in (False, True):
            sel = [r for r in rows if r["query_aware"] == mode and task in (r["task"], "all")]
            for part in ("key", "value"):
                mean = {k: sum(r[part][k] for r in sel) / len(sel) for k in ("surprisal", "percentile", "kept")}
                print(f"{task:<14} {'aware' if mode else 'agnostic':<9} {part:<6} {mean['surprisal']:>9.2f} "
                      f"{mean['percentile']:>10.1f} {mean['kept']:>6.2f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
