"""Open-loop check of the surprisal signal: for validation prompts, does the top 14% of tokens by
(max-pooled) surprisal hold the answer span outside the recent window?
    .venv/bin/python docs/results/surprisal_open_loop.py niah_single,passkey,niah_multikey,doc_qa
"""
import sys, torch, numpy as np, torch.nn.functional as F
torch.set_num_threads(2)
from namm.models import load_model
from namm.tasks.base import make_sample
from namm.prompts import split_prompt
lm = load_model(); tok = lm.tokenizer
tasks = sys.argv[1].split(",")
res = {}
for task in tasks:
  for length in (1024, 2048):
    for idx in range(3):
        s = make_sample(task, length, "validation", idx)
        ans = s.answers[0] if isinstance(s.answers[0], str) else s.answers[0][0]
        parts = split_prompt(tok, s.context, s.question)
        text = parts.context
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]]); offs = enc["offset_mapping"]
        c0 = text.find(ans)
        if c0 < 0: print("no answer in ctx", task, ans[:30]); continue
        c1 = c0 + len(ans)
        span = [i for i,(a,b) in enumerate(offs) if a < c1 and b > c0]
        with torch.no_grad():
            lp = F.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
        n = ids.shape[1]
        sur = torch.zeros(n); sur[1:] = -lp[:-1].gather(1, ids[0,1:,None])[:,0]
        recent = int(0.14*n); old = n - recent
        out = {}
        for k in (1, 9, 17, 33):
            sc = F.max_pool1d(sur[None,None], k, 1, k//2)[0,0] if k > 1 else sur
            sc = sc[:old].clone(); sc[:4] = -1e9
            thr = torch.topk(sc, int(0.14*n)).values[-1]
            kept = [i for i in span if i < old and sc[i] >= thr]
            tot = [i for i in span if i < old]
            out[k] = (len(kept), len(tot))
        print(task, length, idx, "n", n, "span", span[0], len(span), "in recent" if span[0] >= old else "", out, flush=True)
