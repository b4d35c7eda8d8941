"""Write a NAMM checkpoint that is another one with some settings replaced (a validated variant).

    python -m namm.evolution.variant --base namm/checkpoints/smollm2-135m.pt \
        --set namm:scorer=zero:surprise=1:recent=0.25:surprise_pool=33 --out runs/namm-variant.pt \
        --selection runs/compare/val-grid.jsonl

The variant string is the one `namm.evaluation.compare` evaluated; `--selection` names the
comparison file the choice was made on (recorded in the checkpoint's `training` entry).
"""
from __future__ import annotations

import argparse
import json
import os
import datetime as dt

import torch

from namm.evaluation.compare import parse_variant
from namm.policies.namm import NammPolicy


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the checkpoint the variant starts from")
    p.add_argument("--set", required=True, dest="variant", help="namm:key=value[:key=value...]")
    p.add_argument("--out", required=True)
    p.add_argument("--selection", default=None, help="the comparison the variant was chosen on")
    p.add_argument("--validation", default=None,
                   help='the figures it was chosen on, JSON: {"prompts": 43, "namm": 0.59, "streaming_llm": 0.32, ...}')
    args = p.parse_args(argv)
    try:
        policy = NammPolicy.variant(args.base, parse_variant(args.variant))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    try:
        validation = json.loads(args.validation) if args.validation else None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--validation is not JSON: {exc}") from None
    base = torch.load(args.base, map_location="cpu", weights_only=False)
    training = {"method": "variant of a checkpoint, chosen closed-loop on validation",
                "variant": args.variant, "base_training": base.get("training"),
                "selection": args.selection, "validation": validation, "written": dt.datetime.now(dt.timezone.utc).isoformat()}
    tmp = f"{args.out}.tmp"
    policy.save(tmp, training=training)
    os.replace(tmp, args.out)  # processes loading the file meanwhile see the old one or the new one
    print(f"wrote {args.out}: {args.variant}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
