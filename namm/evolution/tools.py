"""Checkpoint editors and the closed-loop selection harness: the pipeline's last stages.

    # closed-loop validation of NAMM variants against the full cache (exact match), JSONL rows
    python -m namm.evolution select --tasks niah_single,passkey --n 5 \
        --variants streaming_llm,zero:w=1:r=0.25:k=65,file=runs/cma.pt --out runs/val.jsonl
    # the winner as a checkpoint: another one with some settings replaced
    python -m namm.evolution variant --base namm/checkpoints/smollm2-135m.pt \
        --set namm:scorer=zero:surprise=1:recent=0.25:surprise_pool=33 --out runs/namm-variant.pt \
        --selection runs/compare/val-grid.jsonl
    # or a budget profile of a checkpoint: the settings that apply from a kept fraction up
    python -m namm.evolution profile --base namm/checkpoints/smollm2-135m.pt --from-budget 0.4 \
        --mix '{"word:33": 1.0}' --recent 0.15 --out namm/checkpoints/smollm2-135m.pt \
        --selection docs/results/namm-validation-s8-050.jsonl --validation '{"prompts": 88, ...}'

`variant`: the variant string is the one `namm.evaluation.compare` evaluated; `--selection` names
the comparison file the choice was made on (recorded in the checkpoint's `training` entry).

`profile`: see NammPolicy.profile_for. A mix with word:K views needs the model's word-start table
(namm/surprisal.py word_start_table); it is computed from the model's tokenizer (`--model`, the
default model when not given) and stored in the checkpoint with the model's name.

`select`: each prompt runs first with the full cache; where the full cache answers wrong the
prompt says nothing about memory and its variants are skipped. A variant is `ship` (the `--base`
checkpoint as it is), `zero` (the same with a zero scorer), either with options :w= (surprise
weight), :k= (surprisal pool), :r= (recent share), :s= (sinks); `file=PATH` (another checkpoint
as it is); or a baseline policy's name. The output file is appended to and a rerun skips what
it holds, so a stopped run resumes. The shipped checkpoint was chosen with it (rows:
docs/results/namm-selection-validation.jsonl, namm-validation-s8-*.jsonl).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import torch

from namm.policies.namm import NammPolicy

PROG = "python -m namm.evolution"


def _json(text: str, flag: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{flag} is not JSON: {exc}") from None


# ---- variant: a checkpoint with some settings replaced -------------------------------------------
def add_variant_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="the checkpoint the variant starts from")
    p.add_argument("--set", required=True, dest="variant", help="namm:key=value[:key=value...]")
    p.add_argument("--out", required=True)
    p.add_argument("--selection", default=None, help="the comparison the variant was chosen on")
    p.add_argument("--validation", default=None,
                   help='the figures it was chosen on, JSON: {"prompts": 43, "namm": 0.59, "streaming_llm": 0.32, ...}')


def write_variant(args) -> int:
    from namm.evaluation.compare import parse_variant

    try:
        policy = NammPolicy.variant(args.base, parse_variant(args.variant))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    validation = _json(args.validation, "--validation") if args.validation else None
    base = torch.load(args.base, map_location="cpu", weights_only=False)
    training = {"method": "variant of a checkpoint, chosen closed-loop on validation",
                "variant": args.variant, "base_training": base.get("training"),
                "selection": args.selection, "validation": validation,
                "written": dt.datetime.now(dt.timezone.utc).isoformat()}
    tmp = f"{args.out}.tmp"
    policy.save(tmp, training=training)
    os.replace(tmp, args.out)  # processes loading the file meanwhile see the old one or the new one
    print(f"wrote {args.out}: {args.variant}")
    return 0


# ---- profile: the settings of a checkpoint from a kept fraction up --------------------------------
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


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
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


def write_profile(args) -> int:
    from namm.surprisal import parse_view

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
    where = "base" if args.from_budget is None else f"from {args.from_budget}"
    print(f"wrote {args.out}: {where}: {mix}" + (f", recent {args.recent}" if args.recent is not None else ""))
    return 0


# ---- select: closed-loop validation of variants ---------------------------------------------------
SELECT_OPTIONS = {"w": "surprise", "k": "surprise_pool", "r": "recent", "s": "sinks"}  # :w= -> NammPolicy setting


def parse_selection_variant(name: str) -> tuple[str, dict[str, str]]:
    """`zero:w=1:r=0.25` -> ("zero", {"surprise": "1", "recent": "0.25"}); `file=PATH` -> ("file", {"path": PATH});
    a baseline's name -> (name, {}). Options are for `ship` and `zero` only."""
    if name.startswith("file="):
        return "file", {"path": name[5:]}
    kind, *opts = name.split(":")
    settings = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or key not in SELECT_OPTIONS:
            raise ValueError(f"variant {name!r}: options are :w= :k= :r= :s= (key=value), got {opt!r}")
        settings[SELECT_OPTIONS[key]] = value
    if settings and kind not in ("ship", "zero"):
        raise ValueError(f"variant {name!r}: options apply to ship and zero only")
    return kind, settings


def selection_policy(name: str, budget: float, base: str | Path):
    """The policy a selection variant names, at `budget` (see `parse_selection_variant`)."""
    from namm.policies import make_policy

    kind, settings = parse_selection_variant(name)
    if kind == "file":
        return NammPolicy.from_checkpoint(settings["path"], budget=budget)
    if kind == "ship":
        return NammPolicy.variant(base, settings, budget=budget)
    if kind == "zero":
        return NammPolicy.variant(base, {"scorer": "zero", **settings}, budget=budget)
    return make_policy(kind, budget)


def add_select_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--lengths", default="1024,2048")
    p.add_argument("--n", type=int, default=4, help="sample indices per task and length")
    p.add_argument("--start", type=int, default=0, help="first sample index")
    p.add_argument("--variants", required=True, help="comma-separated: ship, zero[:w=..:k=..:r=..:s=..], "
                                                     "file=PATH, or a baseline policy's name")
    p.add_argument("--out", required=True, help="JSONL rows (appended; a rerun skips what is there)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--split", default="validation")
    p.add_argument("--budget", type=float, default=0.28)
    p.add_argument("--only", default="", help="comma-separated samples (task@length/index): run just these")
    p.add_argument("--base", default="namm/checkpoints/smollm2-135m.pt",
                   help="the checkpoint `ship` and `zero` start from")


def selection_plan(tasks: list[str], lengths: list[int], start: int, n: int) -> list[tuple[str, int, int]]:
    """(task, length, index) in the order the harness runs them: index, then length, then task."""
    return [(task, length, idx) for idx in range(start, start + n) for length in lengths for task in tasks]


def run_selection(lm, args, variants: list[str], log=print) -> None:
    from namm.generate import generate
    from namm.policies import make_policy
    from namm.tasks import get_task, make_sample, score_answer

    out = Path(args.out)
    done, full_wrong = set(), set()
    if out.exists():
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        done = {(r["variant"], r["sample"]) for r in rows}
        full_wrong = {r["sample"] for r in rows if r["variant"] == "full" and r["score"] < 1}
    only = set(args.only.split(",")) if args.only else None
    with out.open("a") as f:
        for task, length, idx in selection_plan(args.tasks.split(","), [int(x) for x in args.lengths.split(",")],
                                                args.start, args.n):
            key = f"{task}@{length}/{idx}"
            if key in full_wrong or (only is not None and key not in only):
                continue  # a recorded full-cache miss says nothing about memory
            sample, spec = make_sample(task, length, args.split, idx), get_task(task)
            for v in ["full"] + variants:
                if (v, key) in done:
                    continue
                t0 = time.time()
                pol = make_policy("full", None) if v == "full" else selection_policy(v, args.budget, args.base)
                r = generate(lm, sample.context, [sample.question], policy=pol, max_new_tokens=spec.max_new_tokens)
                score = score_answer(r.answers[0], sample.answers, spec.metric)
                row = dict(variant=v, sample=key, task=task, score=score, answer=r.answers[0][:80],
                           kept=r.stats.kv_kept_fraction, secs=round(time.time() - t0, 1))
                f.write(json.dumps(row) + "\n")
                f.flush()
                log(json.dumps(row))
                if v == "full" and score < 1:
                    break  # the full cache got it wrong: the variants would say nothing about memory


def select(args, parser: argparse.ArgumentParser) -> int:
    variants = [v for v in args.variants.split(",") if v]
    try:  # bad variants, lengths or files are usage errors before the model loads
        [int(x) for x in args.lengths.split(",")]
        for v in variants:
            selection_policy(v, args.budget, args.base)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        parser.error(f"{exc}")
    torch.set_num_threads(args.threads)
    from namm.models import load_model

    run_selection(load_model(), args, variants)
    return 0


# ---- the command line -----------------------------------------------------------------------------
COMMANDS = {
    "select": ("closed-loop validation of NAMM variants against the full cache (JSONL rows)", add_select_arguments),
    "variant": ("write a checkpoint that is another one with some settings replaced", add_variant_arguments),
    "profile": ("set a budget profile of a checkpoint (settings from a kept fraction up)", add_profile_arguments),
}


def build_parser(prog: str = PROG) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    subs = {}
    for name, (help_, add) in COMMANDS.items():
        subs[name] = sub.add_parser(name, help=help_, description=help_)
        add(subs[name])
    return p, subs


def main(argv=None) -> int:
    p, subs = build_parser()
    args = p.parse_args(argv)
    if args.cmd == "variant":
        return write_variant(args)
    if args.cmd == "profile":
        return write_profile(args)
    return select(args, subs["select"])


if __name__ == "__main__":
    raise SystemExit(main())
