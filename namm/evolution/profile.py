"""Set a budget profile of a NAMM checkpoint: the settings that apply from a kept fraction up
(see NammPolicy.profile_for), chosen closed-loop on validation.

    python -m namm.evolution.profile --base namm/checkpoints/smollm2-135m.pt --from-budget 0.4 \
        --mix '{"word:33": 1.0}' --recent 0.15 --out namm/checkpoints/smollm2-135m.pt \
        --selection docs/results/namm-validation-s8-050.jsonl --validation '{"prompts": 88, ...}'

A mix with word:K views needs the model's word-start table (namm/surprisal.py
word_start_table); it is computed from the model's tokenizer (`--model`, the default model when
not given) and stored in the checkpoint with the model's name.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os

import torch

from namm.policies.namm import NammPolicy
from namm.surprisal import parse_view


def _json(text: str, flag: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{flag} is not JSON: {exc}") from None


def set_profile(base: dict, from_budget: float | None, mix: dict[str, float], recent: float | None,
                word_starts: torch.Tensor | None, model_name: str | None) -> dict:
    """A copy of checkpoint dict `base` whose profile from `from_budget` up is (mix, recent);
    `from_budget` None sets the base settings (what applies below every profile, and to token budgets)."""
    ckpt = dict(base)
    settings = {"surprise_mix": {str(k): float(v) for k, v in mix.items()}}
    if recent is not None:
        settings["recent"] = float(recent)
    if from_budget is None:
        ckpt.update(settings)
    else:
        profile = {"from_budget": float(from_budget), **settings}
        others = [p for p in ckpt.get("profiles") or [] if p["from_budget"] != profile["from_budget"]]
        ckpt["profiles"] = sorted(others + [profile], key=lambda p: p["from_budget"])
    if word_starts is not None:
        ckpt["word_starts"], ckpt["word_starts_model"] = word_starts, model_name
    return ckpt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--from-budget", type=float, help="the kept fraction the profile applies from")
    where.add_argument("--base-settings", action="store_true",
                       help="set the base settings instead (below every profile, and token budgets)")
    p.add_argument("--mix", required=True, help='surprisal views and weights, JSON: {"word:33": 1.0}')
    p.add_argument("--recent", type=float, default=None, help="the recent share under this profile")
    p.add_argument("--model", default=None, help="a local model folder (the default model when not given)")
    p.add_argument("--selection", default=None, help="the comparison the profile was chosen on")
    p.add_argument("--validation", default=None, help="the figures it was chosen on, JSON")
    args = p.parse_args(argv)
    mix = _json(args.mix, "--mix")
    if not isinstance(mix, dict) or not mix:
        raise SystemExit('--mix wants a JSON object of views and weights, e.g. {"word:33": 1.0}')
    try:
        for view in mix:
            parse_view(view)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.from_budget is not None and not 0.0 < args.from_budget < 1.0:
        raise SystemExit(f"--from-budget is a kept fraction in (0, 1), got {args.from_budget}")
    validation = _json(args.validation, "--validation") if args.validation else None
    if not os.path.isfile(args.base):
        raise SystemExit(f"--base {args.base}: no such checkpoint file")
    base = torch.load(args.base, map_location="cpu", weights_only=False)
    word_starts, model_name = None, None
    if any(str(v).startswith("word:") for v in mix):
        from namm.models import load_model
        from namm.surprisal import word_start_table

        lm = load_model(args.model)
        word_starts, model_name = word_start_table(lm.tokenizer), lm.name
    ckpt = set_profile(base, args.from_budget, mix, args.recent, word_starts, model_name)
    training = dict(ckpt.get("training") or {})
    training.setdefault("profile_history", []).append({
        "from_budget": args.from_budget, "surprise_mix": mix, "recent": args.recent, "selection": args.selection,
        "validation": validation, "written": dt.datetime.now(dt.timezone.utc).isoformat()})
    ckpt["training"] = training
    tmp = f"{args.out}.tmp"
    torch.save(ckpt, tmp)
    try:  # the file must load at the profile's budget before it replaces anything
        NammPolicy.from_checkpoint(tmp, budget=args.from_budget or base.get("budget"), model_name=model_name)
    except ValueError as exc:
        os.remove(tmp)
        raise SystemExit(f"the profile does not load: {exc}") from None
    os.replace(tmp, args.out)  # processes loading the file meanwhile see the old one or the new one
    print(f"wrote {args.out}: {'base' if args.from_budget is None else f'from {args.from_budget}'}: {mix}" + (f", recent {args.recent}" if args.recent is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
