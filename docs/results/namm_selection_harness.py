"""Closed-loop validation of NAMM variants (exact match, prompts the full cache solves); the
harness the shipped checkpoint was chosen with (rows: namm-selection-validation.jsonl). Variants:
`ship`, `zero` (zero scorer) with :w= (surprise weight) :k= (pool) :r= (recent share), `file=PATH`
(another checkpoint as it is), or a baseline name."""
import sys, json, time, argparse, torch
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--tasks"); p.add_argument("--lengths", default="1024,2048"); p.add_argument("--n", type=int, default=4)
p.add_argument("--start", type=int, default=0)
p.add_argument("--variants"); p.add_argument("--out"); p.add_argument("--threads", type=int, default=1)
p.add_argument("--split", default="validation"); p.add_argument("--budget", type=float, default=0.28)
p.add_argument("--only", default="", help="comma-separated samples (task@length/index): run just these")
p.add_argument("--base", default="namm/checkpoints/smollm2-135m.pt", help="the checkpoint `ship` and `zero` start from")
a = p.parse_args()
torch.set_num_threads(a.threads)
from namm.models import load_model
from namm.tasks.base import make_sample, get_task
from namm.tasks.metrics import score_answer
from namm.generate import generate
from namm.policies import make_policy
from namm.policies.namm import NammPolicy
CK = a.base  # the selection ran with the previous shipped file (git show bb332e2~1:namm/checkpoints/smollm2-135m.pt)
def variant(name, b):
    if name.startswith("file="):
        return NammPolicy.from_checkpoint(name[5:], budget=b)
    kind, *opts = name.split(":")
    kw = dict(o.split("=") for o in opts)
    if kind == "ship":
        pol = NammPolicy.from_checkpoint(CK, budget=b)
    elif kind == "zero":
        pol = NammPolicy.from_checkpoint(CK, budget=b); pol.set_params(torch.zeros_like(pol.params).numpy())
    else:
        return make_policy(kind, b)
    for k, v in kw.items():
        if k == "w": pol.surprise = float(v); pol.needs_surprisal = pol.surprise > 0
        if k == "k": pol.surprise_pool = int(v)
        if k == "r": pol.recent = float(v)
        if k == "s": pol.sinks = int(v)
    pol.set_params(pol.params.numpy())  # re-derive needs_attention after the overrides
    return pol
lm = load_model()
out = Path(a.out); done = set(); full_wrong = set()
if out.exists():
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    done = {(r["variant"], r["sample"]) for r in rows}
    full_wrong = {r["sample"] for r in rows if r["variant"] == "full" and r["score"] < 1}
f = out.open("a")
for idx in range(a.start, a.start + a.n):
  for length in map(int, a.lengths.split(",")):
    for task in a.tasks.split(","):
        s = make_sample(task, length, a.split, idx)
        key = f"{task}@{length}/{idx}"
        spec = get_task(task)
        if key in full_wrong: continue  # a recorded full-cache miss: nothing to compare
        if a.only and key not in a.only.split(","): continue
        for v in ["full"] + a.variants.split(","):
            if (v, key) in done: continue
            t0 = time.time()
            pol = make_policy("full", None) if v == "full" else variant(v, a.budget)
            r = generate(lm, s.context, [s.question], policy=pol, max_new_tokens=spec.max_new_tokens)
            sc = score_answer(r.answers[0], s.answers, spec.metric)
            row = dict(variant=v, sample=key, task=task, score=sc, answer=r.answers[0][:80], kept=r.stats.kv_kept_fraction, secs=round(time.time()-t0,1))
            f.write(json.dumps(row) + "\n"); f.flush()
            print(row, flush=True)
            if v == "full" and sc < 1: break  # the full cache got it wrong: says nothing about memory
