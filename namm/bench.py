"""Speed and memory benchmark: every policy side by side on the same text and model.

Prints one table: prefill and decode tokens/s, peak KV bytes against the full cache, the policy's
own time (features + scoring + the recomputed window attention) as a share of forward time, the
end-to-end speed-up over the full cache, and NAMM's bookkeeping bytes per cached slot (a
constant means bookkeeping memory is linear in cache length).
"""
from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path

import torch

from .generate import prefill
from .memory import NammCache
from .policies import make_policy

DEFAULT_POLICIES = "full,surprisal,streaming_llm,h2o,tova,snapkv,l2norm,recency,random"


def real_text_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    """Real text (Python standard library sources) long enough for `n_tokens` tokens."""
    root = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    for path in sorted(root.glob("*.py")):
        ids.extend(tokenizer.encode(path.read_text(encoding="utf-8", errors="ignore"), add_special_tokens=False))
        if len(ids) >= n_tokens:
            break
    return torch.tensor([ids[:n_tokens]])


def _sync(t: torch.Tensor) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (no-op on CPU)."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


@torch.no_grad()
def run_one(lm, ids: torch.Tensor, policy: str, budget, decode_tokens: int, n_up: int) -> dict:
    pol = make_policy(policy, None if policy == "full" else budget, model_name=lm.name)
    cache = NammCache(lm.model.config, pol, n_up=n_up)
    t0 = time.perf_counter()
    logits = prefill(lm, cache, ids)
    _sync(logits)
    t_prefill = time.perf_counter() - t0
    policy_prefill = cache.policy_seconds
    t0 = time.perf_counter()
    for _ in range(decode_tokens):  # fixed length: no early stop, so every policy decodes the same count
        token = logits.argmax(-1, keepdim=True)
        out = lm.model(input_ids=token, past_key_values=cache, use_cache=True).logits
        cache.after_forward(token, out)  # a surprisal-weighing memory records the token's surprisal
        logits = out[:, -1]
    _sync(logits)
    t_decode = time.perf_counter() - t0
    total = t_prefill + t_decode
    slots = sum(layer.length for layer in cache.layers)
    state_bytes = sum(t.nbytes for layer in cache.layers for t in layer.state.values())
    return {
        "tokens": ids.shape[1], "policy": pol.name, "budget": pol.budget,
        "prefill_tok_s": ids.shape[1] / t_prefill, "decode_tok_s": decode_tokens / t_decode if decode_tokens else None,
        "kv_bytes_peak": cache.peak_bytes, "kv_bytes_full": cache.full_cache_bytes(),
        "kept_fraction": cache.kept_fraction(), "policy_seconds": cache.policy_seconds,
        "policy_share": cache.policy_seconds / max(total - cache.policy_seconds, 1e-9),
        "policy_prefill_seconds": policy_prefill, "seconds": total,
        "state_bytes_per_slot": state_bytes / slots if slots else 0.0,
    }


def run_rows(lm, ids_all: torch.Tensor, plan: list[tuple[int, str]], args, on_row=None) -> list[dict]:
    """Run each (length, policy) of `plan` on the first `length` ids; rows go to stderr as JSON
    lines and, after every row, to `args.json_out` (so a stopped run keeps what it measured)."""
    rows = []
    for n, policy in plan:
        row = run_one(lm, ids_all[:, :n], policy, args.budget, args.decode_tokens, args.n_up)
        if on_row is not None:
            on_row(row)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return rows


def format_table(rows: list[dict]) -> str:
    full_time = {r["tokens"]: r["seconds"] for r in rows if r["policy"] == "full"}
    head = (f"{'tokens':>6} {'policy':<14} {'budget':>6} {'prefill tok/s':>13} {'decode tok/s':>12} "
            f"{'peak KV MiB':>11} {'% of full':>9} {'kept':>6} {'policy/fwd':>10} {'speed-up':>8} {'state B/slot':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = full_time.get(r["tokens"])
        lines.append(
            f"{r['tokens']:>6} {r['policy']:<14} {str(r['budget'] or '-'):>6} {r['prefill_tok_s']:>13.1f} "
            f"{(r['decode_tok_s'] or 0):>12.2f} {r['kv_bytes_peak'] / 2**20:>11.1f} "
            f"{100 * r['kv_bytes_peak'] / r['kv_bytes_full']:>8.1f}% {r['kept_fraction']:>6.2f} "
            f"{100 * r['policy_share']:>9.1f}% {(speed / r['seconds'] if speed else float('nan')):>7.2f}x "
            f"{r['state_bytes_per_slot']:>12.1f}"
        )
    return "\n".join(lines)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lengths", default="2048,4096,8192,16384", help="context lengths in tokens")
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--long-policies", default="full,surprisal,streaming_llm,h2o",
                   help="policies also run at lengths above --long-from (the rest only below)")
    p.add_argument("--long-from", type=int, default=8192)
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--n-up", type=int, default=512)
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json-out", default=None)


def run_bench(args) -> int:
    from .models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    long_policies = {p.strip() for p in args.long_policies.split(",")}
    ids_all = real_text_ids(lm.tokenizer, max(lengths))
    plan = [(n, p) for n in lengths for p in policies if n < args.long_from or p in long_policies]
    rows = run_rows(lm, ids_all, plan, args)
    print(f"model {lm.name}, torch threads {torch.get_num_threads()}, budget {args.budget}, n_up {args.n_up}, "
          f"{args.decode_tokens} decode tokens")
    print(format_table(rows))
    return 0


def add_bench_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="speed and memory of every policy side by side")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)
    return p


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    add_bench_arguments(p)
    return run_bench(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
