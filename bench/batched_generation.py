"""Batched generation against one-at-a-time, side by side in one run (issue 22, items 2 and 4).

A fixed mix of documents (task generators of namm.tasks, lengths spread evenly over a range),
each with short questions and a summary instruction, answered by:

  one-at-a-time full        namm.generate per document, full cache
  one-at-a-time surprisal   namm.generate per document, the shipped memory
  batched full              namm.generate_batch, max_batch answers per decoding step
  batched surprisal         the same with the shipped memory
  transformers dynamic      model.generate with its DynamicCache (SDPA), the document read once
                            per document and the cache copied for each question
  transformers static+compile   model.generate with a StaticCache and torch.compile (inductor)
                            of the decoding step (the hf_compile run of --runs; its compilation is timed apart)

Every run decodes plain greedy (Decoding.plain(): no loop guard, so every run does the same
kind of work and transformers' generate is comparable), up to --max-new-tokens per prompt.
Columns: wall seconds, documents per hour, tokens per second end to end (tokens read, each
document once plus its questions, and tokens written, over the wall time), decode tokens per
second (tokens written over the time spent decoding, summed over the batch), the batch size.

Then decode alone: the same memories (read once with each policy) answered one row at a time
with namm.generate's step, and --decode-rows rows in one batched step; tokens per second over
--decode-steps steps.

    OMP_NUM_THREADS=1 python bench/batched_generation.py --threads 1 --docs 8 --min-tokens 1000 --max-tokens 3000
    python bench/batched_generation.py --tiny            # CPU smoke run on a random tiny Llama 3
    python bench/batched_generation.py --llama3-8b       # CUDA: Llama 3 8B architecture, random bf16 weights
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import namm  # noqa: E402
from namm.batch import generate_batch  # noqa: E402
from namm.batched_step import batched_step, packed_linears  # noqa: E402
from namm.decoding import Decoding  # noqa: E402
from namm.generate import prefill  # noqa: E402
from namm.memory import ATTN_IMPLEMENTATION, NammCache  # noqa: E402
from namm.policies import make_policy  # noqa: E402
from namm.prompts import encode_text, split_prompt, stop_token_ids  # noqa: E402
from namm.spec import GenerationRequest  # noqa: E402

TASKS = ("doc_qa", "niah_single", "variable_tracking", "passkey", "code_constant", "niah_multikey")
EXTRA_QUESTIONS = ("What is the main topic of the text?", "Name one person, place or number the text mentions.")
SUMMARY = "Summarize the text in about 100 words."


# ---- the mix --------------------------------------------------------------------------------------
def make_mix(n_docs: int, min_tokens: int, max_tokens: int, questions: int, max_new: int, n_up: int,
             tiny: bool = False) -> list[dict]:
    """n_docs documents, lengths spread evenly over [min_tokens, max_tokens], each with
    `questions` short questions (its task's own first) and a summary instruction."""
    from namm.tasks import make_sample

    docs = []
    for i in range(n_docs):
        length = min_tokens if n_docs == 1 else round(min_tokens + (max_tokens - min_tokens) * i / (n_docs - 1))
        if tiny:
            g = torch.Generator().manual_seed(i)
            words = "alpha beta gamma delta epsilon zeta eta theta".split()
            context = " ".join(words[int(k)] for k in torch.randint(0, len(words), (length // 6,), generator=g))
            qs = ["what?", "who?", "where?"][:questions]
        else:
            s = make_sample(TASKS[i % len(TASKS)], length, "test", i)
            context, qs = s.context, [s.question, *EXTRA_QUESTIONS][:questions]
        docs.append({"context": context, "questions": [*qs, SUMMARY], "max_new_tokens": max_new, "n_up": n_up})
    return docs


def requests_for(docs: list[dict], policy: str) -> list[GenerationRequest]:
    return [GenerationRequest(context=d["context"], questions=tuple(d["questions"]), policy=policy,
                              max_new_tokens=d["max_new_tokens"], n_up=d["n_up"]) for d in docs]


# ---- namm runs ------------------------------------------------------------------------------------
def run_one_at_a_time(lm, docs, policy: str) -> dict:
    plain = Decoding.plain()
    started = time.perf_counter()
    results = [namm.generate(lm, r, decoding=plain) for r in requests_for(docs, policy)]
    wall = time.perf_counter() - started
    return _row(f"one-at-a-time {policy}", 1, wall, results,
                decode_seconds=sum(r.stats.seconds_decode for r in results))


def run_batched(lm, docs, policy: str, max_batch: int) -> dict:
    report: dict = {}
    started = time.perf_counter()
    results = generate_batch(lm, requests_for(docs, policy), max_batch=max_batch, decoding=Decoding.plain(),
                             report=report)
    wall = time.perf_counter() - started
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise failed[0]
    row = _row(f"batched {policy}", max_batch, wall, results, decode_seconds=report["decode_seconds"])
    row["mean_rows"] = report["decode_rows"] / max(1, report["decode_steps"])
    return row


def _row(name, batch, wall, results, decode_seconds) -> dict:
    tokens_in = sum(r.stats.tokens_in for r in results)
    tokens_out = sum(r.stats.tokens_out for r in results)
    return {"run": name, "batch": batch, "seconds": wall, "docs_per_hour": 3600 * len(results) / wall,
            "tokens_per_s": (tokens_in + tokens_out) / wall, "decode_tokens_per_s": tokens_out / decode_seconds,
            "tokens_in": tokens_in, "tokens_out": tokens_out, "answers": [r.answers for r in results]}


# ---- plain transformers anchor --------------------------------------------------------------------
def run_transformers(lm, docs, static: bool, compile_step: bool) -> dict:
    """model.generate per question, the document read once per document into the cache and the
    cache copied for each question (as namm.generate shares one read)."""
    from transformers import DynamicCache, GenerationConfig, StaticCache

    tok, model = lm.tokenizer, lm.model
    stop = sorted(stop_token_ids(tok))
    model.set_attn_implementation("sdpa")
    try:
        runs = []
        for d in docs:
            parts = [split_prompt(tok, d["context"], q) for q in d["questions"]]
            ctx = encode_text(tok, parts[0].context).to(lm.device)
            runs.append((ctx, [encode_text(tok, p.question).to(lm.device) for p in parts], d["max_new_tokens"]))
        longest = max(c.shape[1] + max(q.shape[1] for q in qs) + m for c, qs, m in runs)
        cfg = GenerationConfig(do_sample=False, eos_token_id=stop, pad_token_id=stop[0], max_new_tokens=1)
        if compile_step:
            from transformers import CompileConfig

            cfg.compile_config = CompileConfig(mode="default", fullgraph=False, dynamic=False)
            cfg.compile_config._compile_all_devices = True
        else:
            cfg.disable_compile = True

        def new_cache():
            if static:
                return StaticCache(config=model.config, max_cache_len=longest)
            return DynamicCache(config=model.config)

        compile_seconds = 0.0
        if compile_step:  # compile outside the measurement, on a short prompt of the same cache shape
            t0 = time.perf_counter()
            ctx, qs, m = runs[0]
            warm = new_cache()
            with torch.no_grad():
                model(input_ids=ctx[:, :16], past_key_values=warm, use_cache=True)
            ids = torch.cat([ctx[:, :16], qs[0]], dim=1)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=warm,
                           generation_config=_with(cfg, max_new_tokens=8))
            compile_seconds = time.perf_counter() - t0

        started = time.perf_counter()
        decode_seconds, tokens_in, tokens_out, answers = 0.0, 0, 0, []
        for ctx, qs, max_new in runs:
            cache = new_cache()
            with torch.no_grad():
                model(input_ids=ctx, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tokens_in += ctx.shape[1]
            doc_answers = []
            for q in qs:
                ids = torch.cat([ctx, q], dim=1)
                t0 = time.perf_counter()
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     past_key_values=copy.deepcopy(cache),
                                     generation_config=_with(cfg, max_new_tokens=max_new))
                decode_seconds += time.perf_counter() - t0
                new = out[0, ids.shape[1]:].tolist()
                new = new[: next((i for i, t in enumerate(new) if t in stop), len(new))]
                tokens_in += q.shape[1]
                tokens_out += len(new)
                doc_answers.append(tok.decode(new, skip_special_tokens=True).strip())
            answers.append(doc_answers)
        wall = time.perf_counter() - started
    finally:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    name = "transformers static+compile" if compile_step else ("transformers static" if static else "transformers dynamic")
    return {"run": name, "batch": 1, "seconds": wall, "docs_per_hour": 3600 * len(runs) / wall,
            "tokens_per_s": (tokens_in + tokens_out) / wall, "decode_tokens_per_s": tokens_out / decode_seconds,
            "tokens_in": tokens_in, "tokens_out": tokens_out, "answers": answers, "compile_seconds": compile_seconds}


def _with(cfg, **changes):
    new = copy.deepcopy(cfg)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


# ---- decode alone ---------------------------------------------------------------------------------
@torch.no_grad()
def decode_only(lm, docs, policy: str, rows: int, steps: int) -> dict:
    """tokens/s of `steps` greedy steps: each of `rows` memories alone (namm.generate's one-row
    step), then all of them in one batched step (packed weights as generate_batch uses them)."""
    caches, firsts = [], []
    for d in docs[:rows]:
        request = requests_for([d], policy)[0]
        pol = make_policy(request.policy, request.budget, model_name=lm.name)
        cache = NammCache(lm.model.config, pol, n_up=request.n_up)
        tok = lm.tokenizer
        part = split_prompt(tok, d["context"], d["questions"][-1])
        prefill(lm, cache, encode_text(tok, part.context))
        cache.flush()
        logits = prefill(lm, cache, encode_text(tok, part.question))
        caches.append(cache)
        firsts.append(int(logits[0].argmax()))
    kept = sum(c.kept_fraction() for c in caches) / len(caches)

    def greedy_alone(cache, token):
        t0 = time.perf_counter()
        for _ in range(steps):
            step = torch.tensor([[token]], device=lm.device)
            full = lm.model(input_ids=step, past_key_values=cache, use_cache=True).logits
            cache.after_forward(step, full)
            token = int(full[0, -1].argmax())
        return time.perf_counter() - t0

    alone = [c.copy() for c in caches]
    for c in alone:
        c.policy = copy.deepcopy(c.policy)
    greedy_alone(alone[0].copy(), firsts[0])  # warm-up, as for the batched steps
    t_alone = sum(greedy_alone(c, t) for c, t in zip(alone, firsts))

    linears = packed_linears(lm, rows)
    together = [c.copy() for c in caches]
    for c in together:
        c.policy = copy.deepcopy(c.policy)
    tokens = list(firsts)
    warm = [c.copy() for c in caches]  # packs the weights (once per generate_batch call) outside the timing
    for c in warm:
        c.policy = copy.deepcopy(c.policy)
    batched_step(lm, warm, tokens, linears if rows > 1 else None)
    del warm
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, failed = batched_step(lm, together, tokens, linears if rows > 1 else None)
        assert not failed, failed
        tokens = logits.argmax(-1).tolist()
    t_batch = time.perf_counter() - t0
    if linears is not None:
        linears.release()
    n = rows * steps
    return {"policy": policy, "rows": rows, "steps": steps, "kept": kept,
            "alone_tokens_per_s": n / t_alone, "batched_tokens_per_s": n / t_batch,
            "speedup": t_alone / t_batch}


# ---- output ---------------------------------------------------------------------------------------
def _agree(answers, reference) -> str:
    if reference is None or answers is None:
        return "-"
    pairs = [(a, b) for ra, rb in zip(answers, reference) for a, b in zip(ra, rb)]
    return f"{sum(a == b for a, b in pairs)}/{len(pairs)}"


def format_table(rows: list[dict], reference: list[list[str]] | None) -> str:
    """`reference`: the one-at-a-time full answers; a batched run is also compared with the
    one-at-a-time run of its own policy."""
    head = ("| run | batch (mean rows per step) | wall s | documents/hour | tokens/s end to end | "
            "decode tokens/s (summed) | tokens out | answers = one-at-a-time full | answers = one-at-a-time, same policy |")
    lines = [head, "|" + "---|" * 9]
    by = {r["run"]: r for r in rows}
    for r in rows:
        own = by.get(r["run"].replace("batched ", "one-at-a-time ")) if r["run"].startswith("batched ") else None
        batch = f"{r['batch']} ({r['mean_rows']:.1f})" if "mean_rows" in r else str(r["batch"])
        lines.append(f"| {r['run']} | {batch} | {r['seconds']:.0f} | {r['docs_per_hour']:.0f} | "
                     f"{r['tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | {r['tokens_out']} | "
                     f"{_agree(r.get('answers'), reference)} | {_agree(r.get('answers'), own and own['answers'])} |")
    return "\n".join(lines)


def random_llama3_lm(size: str, device: str):
    """bench/bench_llama3_arch.py's Llama 3 architecture with random weights ("8b": bf16 on a GPU;
    "tiny": float32, the CPU smoke run of the same path), with a byte tokenizer."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_llama3_arch import random_llama3  # noqa: E402  (this folder)

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    lm = random_llama3(size, device, dtype)

    class _Digits:  # random weights: a tokenizer is only needed to turn text into ids and back
        eos_token_id = 128001
        unk_token_id = None
        chat_template = None

        def encode(self, text, add_special_tokens=False):
            return [1000 + (b % 200) for b in text.encode("utf-8")]

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(str(i) for i in ids)

        def convert_tokens_to_ids(self, token):
            return None

        def __len__(self):
            return 128256

    lm.tokenizer = _Digits()
    lm.max_context = 131072
    return lm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--min-tokens", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=3000)
    p.add_argument("--questions", type=int, default=3, help="short questions per document (a summary follows)")
    p.add_argument("--max-new-tokens", type=int, default=150)
    p.add_argument("--n-up", type=int, default=512)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (state it with the table)")
    p.add_argument("--runs", default="one_full,one_surprisal,batched_full,batched_surprisal,hf_dynamic",
                   help="comma list of one_full, one_surprisal, batched_full, batched_surprisal, hf_dynamic, hf_compile")
    p.add_argument("--policy", default=None,
                   help="the memory's policy (default surprisal; streaming_llm with random weights, where the shipped "
                        "surprisal settings belong to no model)")
    p.add_argument("--decode-rows", type=int, default=8)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--decode-policies", default="memory,full", help="'memory' is --policy")
    p.add_argument("--tiny", action="store_true",
                   help="the --llama3-8b path on a random 2-layer Llama 3 (CPU smoke run)")
    p.add_argument("--llama3-8b", action="store_true", help="Llama 3 8B architecture, random bf16 weights (CUDA)")
    p.add_argument("--device", default=None)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.tiny:
        lm = random_llama3_lm("tiny", args.device or "cpu")
    elif args.llama3_8b:
        lm = random_llama3_lm("8b", args.device or "cuda")
    else:
        lm = namm.load_model(device=args.device)
    print(f"model {lm.name} on {lm.device}, {torch.get_num_threads()} threads, loaded in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    synthetic = args.tiny or args.llama3_8b
    memory = args.policy or ("streaming_llm" if synthetic else "surprisal")
    docs = make_mix(args.docs, args.min_tokens, args.max_tokens, args.questions, args.max_new_tokens, args.n_up,
                    tiny=synthetic)
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    rows, reference = [], None
    for name in wanted:
        t0 = time.perf_counter()
        try:
            if name == "one_full":
                row = run_one_at_a_time(lm, docs, "full")
                reference = row["answers"]
            elif name == "one_surprisal":
                row = run_one_at_a_time(lm, docs, memory)
            elif name == "batched_full":
                row = run_batched(lm, docs, "full", args.max_batch)
            elif name == "batched_surprisal":
                row = run_batched(lm, docs, memory, args.max_batch)
            elif name == "hf_dynamic":
                row = run_transformers(lm, docs, static=False, compile_step=False)
            elif name == "hf_compile":
                row = run_transformers(lm, docs, static=True, compile_step=True)
            else:
                raise SystemExit(f"unknown run {name!r}")
        except Exception as exc:  # an anchor that does not run here is reported, not fatal
            print(f"{name}: failed after {time.perf_counter() - t0:.0f} s: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        rows.append(row)
        print(f"{row['run']}: {row['seconds']:.0f} s" + (f" (compile {row['compile_seconds']:.0f} s apart)"
                                                         if row.get("compile_seconds") else ""), file=sys.stderr)
    total_in = rows[0]["tokens_in"] if rows else 0
    print(f"mix: {len(docs)} documents of {args.min_tokens}-{args.max_tokens} tokens, {args.questions} questions + "
          f"a summary each, up to {args.max_new_tokens} new tokens per prompt, plain greedy; {total_in} tokens read "
          f"per run; {torch.get_num_threads()} threads; n_up {args.n_up}")
    print(format_table(rows, reference))
    decode_rows = []
    for policy in [x.strip() for x in args.decode_policies.split(",") if x.strip()]:
        policy = memory if policy == "memory" else policy
        decode_rows.append(decode_only(lm, docs, policy, args.decode_rows, args.decode_steps))
    if decode_rows:
        print()
        print("| decode alone | rows | kept | tokens/s one row at a time | tokens/s batched | batched / alone |")
        print("|---|---|---|---|---|---|")
        for d in decode_rows:
            print(f"| {d['policy']} | {d['rows']} | {d['kept']:.2f} | {d['alone_tokens_per_s']:.1f} | "
                  f"{d['batched_tokens_per_s']:.1f} | {d['speedup']:.2f}x |")
    by = {r["run"]: r for r in rows}
    checks = []
    bs, os_ = by.get(f"batched {memory}"), by.get(f"one-at-a-time {memory}")
    if decode_rows:
        checks.append(f"decode, {decode_rows[0]['rows']} {decode_rows[0]['policy']} jobs batched vs one: "
                      f"{decode_rows[0]['speedup']:.2f}x (target >= 4x)")
    if bs and os_:
        checks.append(f"mix end to end, batched vs one-at-a-time {bs['run'].split()[-1]}: "
                      f"{os_['seconds'] / bs['seconds']:.2f}x (target >= 1.5x)")
    anchor = by.get("transformers dynamic")
    for run in ("one-at-a-time full", "batched full"):
        if anchor and run in by:
            checks.append(f"{run} vs transformers dynamic: {anchor['seconds'] / by[run]['seconds']:.2f}x end to end, "
                          f"decode {by[run]['decode_tokens_per_s'] / anchor['decode_tokens_per_s']:.2f}x (target >= 1x)")
    if checks:
        print()
        for c in checks:
            print("- " + c)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": rows, "decode": decode_rows, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
