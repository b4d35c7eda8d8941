"""Repeated sentences per answer, before and after the sentence-repeat stop (issue 21, item 8).

    OMP_NUM_THREADS=1 .venv/bin/python bench/repeated_sentences.py --threads 1 \\
        --results docs/results/compare-test-s8.jsonl --tokens 2048 --json-out runs/repeats.json

"Before" is today's guards without the new stop (``Decoding(stop_on_repeat=0)``: loop stop
only), "after" the default (``namm.decoding.DEFAULT_DECODING``). A repeated unit is a sentence or
clause of at least 4 words whose text repeats an earlier one of the same answer
(``namm.decoding.repeated_units``).

1. **The evaluation's answers**: every prediction of a results file (one JSON line per policy
   and prompt, as ``namm.evaluation.compare`` writes them; the committed test-split run by
   default). The stop only ever cuts an answer (it never changes a token before the cut), so
   "after" is the stop replayed token by token over the recorded answer's tokens, and both are
   scored against the prompt's answer, rebuilt from the task generators (its digest checked).
2. **Real-document summaries**: each document (a licence, Python modules, PDFs; the first
   ``--tokens`` tokens) is read once per policy (``namm.read_document``) and summarised from
   that memory with both decodings, live.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

import namm
from namm.decoding import DEFAULT_DECODING, Decoding, answer_cut, repeated_units, token_words
from namm.evaluation.compare import sample_key
from namm.tasks.base import make_sample
from namm.tasks.metrics import score_answer
from namm.tasks.sources import stdlib_dir

BEFORE = Decoding(stop_on_repeat=0)
MIN_WORDS = DEFAULT_DECODING.stop_on_repeat
DOCS = ["/usr/share/common-licenses/LGPL-2.1", "/usr/share/common-licenses/Apache-2.0",
        f"{stdlib_dir()}/getpass.py", f"{stdlib_dir()}/textwrap.py",
        "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf", "/usr/share/doc/libtasn1-doc/libtasn1.pdf"]


def guarded(tokens: list[int], words) -> list[int]:
    """The tokens the default decoding keeps of an answer decoded without the new stop."""
    for n in range(1, len(tokens) + 1):
        cut = answer_cut(tokens[:n], DEFAULT_DECODING, words)
        if cut is not None:
            return tokens[:cut]
    return tokens


def _sample(key: str, cache: dict):
    """The prompt a results row names (``task@length#split/index:digest``), digest checked."""
    if key not in cache:
        task, rest = key.split("@", 1)
        length, rest = rest.split("#", 1)
        split, rest = rest.split("/", 1)
        index = int(rest.split(":", 1)[0])
        sample = make_sample(task, int(length), split, index)
        if sample_key(sample) != key:
            raise SystemExit(f"{key}: the task generators now make another prompt (digest {sample_key(sample)})")
        cache[key] = sample
    return cache[key]


def evaluation_answers(lm, path: Path) -> list[dict]:
    words, samples = token_words(lm.tokenizer), {}
    groups = defaultdict(lambda: defaultdict(float))
    for line in path.read_text().splitlines():
        row = json.loads(line)
        sample = _sample(row["sample"], samples)
        tokens = lm.tokenizer.encode(row["prediction"], add_special_tokens=False)
        after = guarded(tokens, words)
        text_after = lm.tokenizer.decode(after, skip_special_tokens=True).strip()
        g = groups[(row["policy"], row["budget"])]
        g["answers"] += 1
        repeats_before = len(repeated_units(tokens, MIN_WORDS, words))
        repeats_after = len(repeated_units(after, MIN_WORDS, words))
        g["repeats_before"] += repeats_before
        g["repeats_after"] += repeats_after
        g["with_repeat_before"] += repeats_before > 0
        g["with_repeat_after"] += repeats_after > 0
        g["cut"] += len(after) < len(tokens)
        before_score = score_answer(row["prediction"], sample.answers, sample.metric)
        after_score = score_answer(text_after, sample.answers, sample.metric)
        g["rescored_differs"] += abs(before_score - row["score"]) > 1e-9  # re-tokenising lost nothing
        g["score_before"] += before_score
        g["score_after"] += after_score
        g["worse"] += after_score < before_score
        g["better"] += after_score > before_score
    return [{"policy": p, "budget": b, **dict(g)} for (p, b), g in groups.items()]


def read_text(path: str, max_tokens: int, tokenizer) -> str:
    if path.endswith(".pdf"):
        from service.api.documents import pdf_to_text

        text = pdf_to_text(Path(path).read_bytes())
    else:
        text = Path(path).read_text(errors="replace")
    ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
    return tokenizer.decode(ids)


def summaries(lm, docs: list[str], policies: list[tuple[str, float | None]], max_tokens: int,
              max_new_tokens: int) -> list[dict]:
    words, rows = token_words(lm.tokenizer), []
    for path in docs:
        if not Path(path).exists():
            print(f"  (skipped: {path} is not on this machine)")
            continue
        text = read_text(path, max_tokens, lm.tokenizer)
        for policy, budget in policies:
            memory = namm.read_document(lm, text, policy=policy, budget=budget)
            row = {"document": Path(path).name, "policy": policy, "budget": budget}
            for name, decoding in (("before", BEFORE), ("after", DEFAULT_DECODING)):
                t0 = time.perf_counter()
                answer = namm.ask(lm, memory, max_new_tokens=max_new_tokens, decoding=decoding).answers[0]
                tokens = lm.tokenizer.encode(answer, add_special_tokens=False)
                row[f"{name}_text"] = answer
                row[f"{name}_tokens"] = len(tokens)
                row[f"{name}_repeats"] = len(repeated_units(tokens, MIN_WORDS, words))
                row[f"{name}_seconds"] = round(time.perf_counter() - t0, 2)
            row["after_is_prefix"] = row["before_text"].startswith(row["after_text"])
            rows.append(row)
            print(f"  {row['document']:32} {policy:13} repeats {row['before_repeats']} -> {row['after_repeats']}, "
                  f"tokens {row['before_tokens']} -> {row['after_tokens']}")
    return rows


def print_tables(evals: list[dict], docs: list[dict]) -> None:
    if evals:
        print("\nEvaluation answers (repeated units per answer; score = mean raw score)")
        print("| policy | budget | answers | with a repeat before | after | repeats/answer before | after "
              "| answers cut | score before | after | worse | better |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        total = defaultdict(float)
        for r in evals:
            n = r["answers"]
            for k, v in r.items():
                if k not in ("policy", "budget"):
                    total[k] += v
            print(f"| {r['policy']} | {r['budget']} | {n:.0f} | {r['with_repeat_before']:.0f} | {r['with_repeat_after']:.0f} "
                  f"| {r['repeats_before'] / n:.3f} | {r['repeats_after'] / n:.3f} | {r['cut']:.0f} "
                  f"| {r['score_before'] / n:.4f} | {r['score_after'] / n:.4f} | {r['worse']:.0f} | {r['better']:.0f} |")
        n = total["answers"]
        print(f"| **all** | | {n:.0f} | {total['with_repeat_before']:.0f} | {total['with_repeat_after']:.0f} "
              f"| {total['repeats_before'] / n:.3f} | {total['repeats_after'] / n:.3f} | {total['cut']:.0f} "
              f"| {total['score_before'] / n:.4f} | {total['score_after'] / n:.4f} | {total['worse']:.0f} "
              f"| {total['better']:.0f} |")
        print(f"(re-scoring the recorded text differed from the recorded score for {total['rescored_differs']:.0f} rows)")
    if docs:
        print("\nReal-document summaries (one read per policy, both decodings from that memory)")
        print("| document | policy | repeats before | after | tokens before | after | after is a prefix |")
        print("|---|---|---|---|---|---|---|")
        for r in docs:
            print(f"| {r['document']} | {r['policy']} | {r['before_repeats']} | {r['after_repeats']} "
                  f"| {r['before_tokens']} | {r['after_tokens']} | {r['after_is_prefix']} |")
        n = len(docs)
        print(f"| **mean** | | {sum(r['before_repeats'] for r in docs) / n:.2f} | "
              f"{sum(r['after_repeats'] for r in docs) / n:.2f} | {sum(r['before_tokens'] for r in docs) / n:.0f} | "
              f"{sum(r['after_tokens'] for r in docs) / n:.0f} | |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("docs/results/compare-test-s8.jsonl"),
                    help="evaluation results (JSON lines with policy, budget, sample, score, prediction); '' skips")
    ap.add_argument("--docs", default=",".join(DOCS), help="real documents to summarise (comma-separated; '' skips)")
    ap.add_argument("--policies", default="surprisal:0.28,full", help="policy[:budget] for the summaries")
    ap.add_argument("--tokens", type=int, default=2048, help="the first N tokens of each document")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = namm.load_model()
    evals = evaluation_answers(lm, args.results) if str(args.results) not in ("", ".") else []
    policies = [(p.split(":")[0], float(p.split(":")[1]) if ":" in p else None) for p in args.policies.split(",") if p]
    docs = [d for d in args.docs.split(",") if d]
    doc_rows = summaries(lm, docs, policies, args.tokens, args.max_new_tokens) if docs else []
    print_tables(evals, doc_rows)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"evaluation": evals, "summaries": doc_rows}, indent=1))


if __name__ == "__main__":
    main()
