"""What the usage record says for one real document under each policy: exact work, billed cost,
and the full-cache counterfactual with its method, next to the full cache's own billed run.

    .venv/bin/python bench/bench_billing.py --threads 1 --tokens 4096 --policies full,surprisal,streaming_llm

Reads the first `--tokens` tokens of real text (Python standard-library sources), asks one
question with each policy through namm.generate, and bills each run as the worker would
(service/jobs/usage.py: the default price version, service/jobs/device_rates.json). The `full`
row is the measured counterfactual of the others: compare its cost with their estimate.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

import torch

from namm.bench import real_text_ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--policies", default="full,surprisal,streaming_llm")
    p.add_argument("--budget", type=float, default=0.3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)

    import namm
    from service.core.settings import PricesSettings
    from service.jobs.usage import usage_record
    from workers.runner import device_name

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = namm.load_model(args.model)
    text = lm.tokenizer.decode(real_text_ids(lm.tokenizer, args.tokens)[0])
    prices = PricesSettings()
    now = datetime.now(timezone.utc)
    print(f"model {lm.name}, device {device_name(lm)}, torch threads {torch.get_num_threads()}, "
          f"budget {args.budget}, {args.max_new_tokens} new tokens at most")
    head = (f"{'policy':<14} {'in':>6} {'out':>4} {'KV steps':>11} {'full steps':>11} {'peak MiB':>8} "
            f"{'full MiB':>8} {'wall s':>7} {'billed s':>8} {'cost uUSD':>9} {'full uUSD':>9} "
            f"{'saved':>7}  method")
    print(head)
    print("-" * len(head))
    for policy in [x.strip() for x in args.policies.split(",") if x.strip()]:
        res = namm.generate(lm, text, ["What does this code do? Answer in one sentence."],
                            policy=policy, budget=None if policy == "full" else args.budget,
                            max_new_tokens=args.max_new_tokens)
        out = res.to_dict()
        out["device"] = device_name(lm)
        u = usage_record(job_id="bench", tenant_id=0, model=lm.name, policy=policy, budget=None,
                         output=out, prices=prices, finished_at=now)
        full = "-" if u.full_cache_cost_micro_usd is None else f"{u.full_cache_cost_micro_usd:,}"
        saved = "-" if u.saved_micro_usd is None else f"{u.saved_micro_usd:,}"
        method = (u.counterfactual_method or "none") + (" (estimated)" if u.counterfactual_estimated else "")
        print(f"{policy:<14} {u.tokens_in:>6} {u.tokens_out:>4} {u.kv_token_steps:>11,.0f} "
              f"{u.kv_token_steps_full:>11,.0f} {u.kv_bytes_peak / 2**20:>8.1f} "
              f"{u.kv_bytes_full_peak / 2**20:>8.1f} {u.seconds:>7.1f} {u.billed_device_seconds:>8.1f} "
              f"{u.cost_micro_usd:>9,} {full:>9} {saved:>7}  {method}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
