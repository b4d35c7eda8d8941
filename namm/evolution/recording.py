"""The candidate-independent full-cache pass of a prompt, recorded once and reused by every fit.

For each prompt the full cache reads the document with a NAMM that keeps everything, and at
every update of every layer the raw EMA spectrogram of each cached token is recorded (what any
NAMM with the same `rows` would compute under the full cache: the open-loop features). Then:

- the full cache answers the question greedily (a prompt is usable only if it answers right);
- the question and the gold answer are read by teacher forcing, which gives the full cache's
  log-probability of the gold answer and, per (layer, KV head), how much attention the question
  and answer tokens pay to each document token: the label of what a memory should have kept.

One `.pt` file per prompt (float16 tensors), so a stopped run resumes where it was and the work
is shared by the supervised warm start, an open-loop surrogate and the reports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from namm.generate import greedy_decode, prefill
from namm.memory import NammCache, window_attention
from namm.policies.namm import NammPolicy
from namm.prompts import encode_text, split_prompt, stop_token_ids
from namm.tasks import Sample, score_answer


class RecordingNamm(NammPolicy):
    """Keeps every token (zero parameters, no budget) and records each update's raw features."""

    def __init__(self, rows: int | None):
        super().__init__(rows=rows)
        self.records: list[dict] = []

    def scores(self, ctx):
        self.token_features(ctx)  # updates ctx.state["namm_ema"] (the raw, unnormalised EMA)
        self.records.append({
            "layer": ctx.layer_idx, "seen": ctx.seen,
            "ema": ctx.state["namm_ema"][0].to(torch.float16).clone(),   # [H, S, 17]
            "positions": ctx.positions[0].to(torch.int32).clone(),       # [H, S]
        })
        return torch.zeros(ctx.valid.shape)


@dataclass
class Recording:
    task: str
    sample: dict
    correct: float            # the full cache's score on its own greedy answer
    prediction: str
    context_len: int
    answer_log_prob: float    # mean log-probability of the gold answer tokens under the full cache
    updates: list[dict]       # per layer and update: ema [H, S, 17], positions [H, S], seen
    importance: torch.Tensor  # [L, H, T] attention of question + answer tokens to each document token
    seconds: float

    def save(self, path: Path) -> None:
        torch.save(self.__dict__, path)

    @classmethod
    def load(cls, path: Path) -> "Recording":
        return cls(**torch.load(path, map_location="cpu", weights_only=False))


def _qa_attention(cache: NammCache, context_len: int) -> torch.Tensor:
    """[L, H, T]: mean attention of the last forward's queries over the first T (document) slots."""
    rows = []
    for layer in cache.layers:
        queries = layer.pending_queries[-1]
        s = layer.length
        attn = window_attention(queries, layer.keys[:, :, :s], layer.valid[:, :, :s], layer.scale)
        rows.append(attn[0, :, :, :context_len].mean(1))
    return torch.stack(rows)


@torch.no_grad()
def record_prompt(lm, sample: Sample, rows: int | None = 128, n_up: int = 512) -> Recording:
    started = time.perf_counter()
    tok = lm.tokenizer
    parts = split_prompt(tok, sample.context, sample.question, None, query_aware=False)
    ctx_ids, q_ids = encode_text(tok, parts.context), encode_text(tok, parts.question)
    policy = RecordingNamm(rows)
    cache = NammCache(lm.model.config, policy, n_up=n_up)
    prefill(lm, cache, ctx_ids)
    cache.flush()
    snap = cache.snapshot()
    cache.n_up = 1 << 30  # no more updates: the question and answer only read the document
    max_new = sample.meta.get("max_new_tokens") or 32
    logits = lm.model(input_ids=q_ids.to(lm.device), past_key_values=cache, use_cache=True).logits[:, -1]
    out = greedy_decode(lm, cache, logits, max_new, stop_token_ids(tok))
    prediction = tok.decode(out, skip_special_tokens=True).strip()
    correct = score_answer(prediction, sample.answers, sample.metric)

    cache.restore(snap)
    gold = sample.gold_text
    a_ids = torch.tensor([tok.encode(gold, add_special_tokens=False)])
    qa = torch.cat([q_ids, a_ids], 1).to(lm.device)
    logits = lm.model(input_ids=qa, past_key_values=cache, use_cache=True).logits[0].float()
    n_a = a_ids.shape[1]
    lp = logits[-n_a - 1:-1].log_softmax(-1).gather(-1, a_ids[0, :, None].to(logits.device))
    importance = _qa_attention(cache, ctx_ids.shape[1]).to(torch.float16)
    return Recording(task=sample.task, sample=sample.to_dict(), correct=float(correct), prediction=prediction,
                     context_len=ctx_ids.shape[1], answer_log_prob=float(lp.mean()), updates=policy.records,
                     importance=importance, seconds=time.perf_counter() - started)

