"""Device rates for billing by work done (service/jobs/rates.py): seconds per token read and per
KV token-step, fitted on full-cache runs, and each policy's seconds per entry it scores.

    .venv/bin/python bench/bench_rates.py --threads 1 --lengths 512,1024,2048 --json-out runs/rates.json

A run reads the first N tokens of real text (Python standard-library sources) and feeds
`--decode-tokens` more one at a time. Its forward seconds (total minus the policy's own) are
fitted as  seconds = a * tokens + b * kv_token_steps  over every run (least squares;
kv_token_steps is exact, from namm's NammCache counters; the evicting runs read as many tokens
as the full cache at the policy length with fewer token-steps, which separates a from b). Each policy's rate is its measured
policy seconds divided by the entries it scored (the sum over update rounds of the entries held
before the update, per layer and KV head). The table shows every run's measured forward seconds
against the fit's prediction. Paste the printed entry into service/jobs/device_rates.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from namm.bench import real_text_ids
from namm.generate import prefill
from namm.memory import NammCache
from namm.policies import make_policy


@torch.no_grad()
def run_one(lm, ids: torch.Tensor, policy: str, budget: float, decode_tokens: int, n_up: int) -> dict:
    pol = make_policy(policy, None if policy == "full" else budget, model_name=lm.name)
    cache = NammCache(lm.model.config, pol, n_up=n_up)
    t0 = time.perf_counter()
    logits = prefill(lm, cache, ids)
    for _ in range(decode_tokens):
        token = logits.argmax(-1, keepdim=True)
        out = lm.model(input_ids=token, past_key_values=cache, use_cache=True).logits
        cache.after_forward(token, out)  # a surprisal-weighing memory records the token's surprisal
        logits = out[:, -1]
    if logits.is_cuda:
        torch.cuda.synchronize(logits.device)
    seconds = time.perf_counter() - t0
    work = cache.take_work()
    return {"policy": pol.name, "tokens": ids.shape[1] + decode_tokens, "seconds": seconds,
            "policy_seconds": work["policy_seconds"], "forward_seconds": seconds - work["policy_seconds"],
            "kv_token_steps": work["kv_token_steps"], "kv_token_steps_full": work["kv_token_steps_full"],
            "entries_scored": sum(before for _, before, _ in work["kv_updates"])}


def fit(rows: list[dict]) -> tuple[float, float]:
    x = torch.tensor([[r["tokens"], r["kv_token_steps"]] for r in rows], dtype=torch.float64)
    y = torch.tensor([[r["forward_seconds"]] for r in rows], dtype=torch.float64)
    a, b = torch.linalg.lstsq(x, y).solution.flatten().tolist()
    return a, b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,1024,2048", help="full-cache lengths for the fit")
    p.add_argument("--policies", default="surprisal,streaming_llm,h2o,tova,snapkv,l2norm,recency,random")
    p.add_argument("--policy-length", type=int, default=2048, help="length the policies are run at")
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="runs per setting; the fastest is kept")
    p.add_argument("--n-up", type=int, default=512)
    p.add_argument("--model", default=None)
    p.add_argument("--device-kind", default=None, help="name in the rates file (default: cpu or cuda)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json-out", default=None)
    p.add_argument("--from-json", default=None, help="refit the rows of an earlier --json-out")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = saved["rows"]
        report(rows, saved["entry"]["model"], saved["entry"]["device"], saved["entry"]["source"])
        return 0

    from namm.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    ids_all = real_text_ids(lm.tokenizer, max(lengths + [args.policy_length]))
    best = lambda n, pol: min((run_one(lm, ids_all[:, :n], pol, args.budget, args.decode_tokens, args.n_up)  # noqa: E731
                               for _ in range(args.repeats)), key=lambda r: r["seconds"])
    rows = [best(n, "full") for n in lengths] + [best(args.policy_length, pol) for pol in policies]
    device = args.device_kind or ("cuda" if str(lm.device).startswith("cuda") else "cpu")
    source = (f"bench/bench_rates.py --lengths {args.lengths} --policy-length {args.policy_length} "
              f"--decode-tokens {args.decode_tokens}, torch threads {torch.get_num_threads()}, "
              f"best of {args.repeats}")
    entry = report(rows, lm.name, device, source)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"entry": entry, "rows": rows}, indent=1))
    return 0


def report(rows: list[dict], model: str, device: str, source: str) -> dict:
    a, b = fit(rows)
    per_entry = {r["policy"]: r["policy_seconds"] / r["entries_scored"]
                 for r in rows if r["entries_scored"] > 0}
    entry = {"model": model, "device": device, "seconds_per_token": a, "seconds_per_kv_token_step": b,
             "policy_seconds_per_entry": per_entry, "source": source}
    print(f"model {model}, device {device}; {source}")
    print(f"{'policy':<14} {'tokens':>6} {'kv token-steps':>14} {'full steps':>12} {'fwd s':>7} {'fit s':>7} "
          f"{'policy s':>8} {'entries scored':>14}")
    for r in rows:
        print(f"{r['policy']:<14} {r['tokens']:>6} {r['kv_token_steps']:>14.0f} {r['kv_token_steps_full']:>12.0f} "
              f"{r['forward_seconds']:>7.2f} {a * r['tokens'] + b * r['kv_token_steps']:>7.2f} "
              f"{r['policy_seconds']:>8.2f} {r['entries_scored']:>14.0f}")
    print(json.dumps(entry, indent=1))
    return entry


if __name__ == "__main__":
    sys.exit(main())
