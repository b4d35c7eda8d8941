"""Teacher-forced fitness of a NAMM candidate, open-loop (surrogate) and closed-loop (real).

Both score a candidate by how well the memory it leaves still predicts the reference answers
(the gold answer and the full cache's own greedy answer): exp(mean log-prob under the candidate
- mean log-prob under the full cache) over the answer tokens, averaged over the references and
the prompts. 1.0 = as good as the full cache; a continuous signal, one short forward per prompt.

- `closed_loop_fitness`: the candidate really reads the document (eviction every update).
- `Surrogate`: the full-cache pass of every prompt is done once (recorded features, see
  `pool --attention`, and the document's KV recomputed once per prompt and kept); a candidate's keep /
  evict decisions are computed from the recorded features, update after update, and its score is
  one forward of the question and answers over the stored KV with the candidate's keep-mask.
  Masking a slot equals evicting it (same attention, same positions; exact when the document
  is read before the only eviction, tested); the approximation is the open loop: the recorded
  features, and the keys of tokens read after an eviction, are those of the full cache. Its rank correlation
  with the closed loop is measured before it is relied on (`python -m namm.evolution.refine
  --correlation`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from namm.features import RunningNorm, scorer_inputs
from namm.generate import continuation_logits, prefill
from namm.memory import NammCache
from namm.policies import make_policy
from namm.policies.base import UpdateContext
from namm.policies.namm import NammPolicy

if TYPE_CHECKING:
    from .pool import PoolPrompt


class ReplayNamm(NammPolicy):
    """A NAMM that reads recorded features instead of computing them (open loop), so that the
    surrogate's keep/evict decisions are `NammPolicy.select` itself: sinks, recent window, cap,
    newest token and tie-break all as in the real policy."""

    features: torch.Tensor  # [1, H, S, 25] of the update being replayed

    def token_features(self, ctx):
        return self.features


@dataclass
class PromptRefs:
    ctx_ids: torch.Tensor               # [1, T]
    q_ids: torch.Tensor                 # [1, Q]
    answers: list[torch.Tensor]         # reference answer ids, each [1, A]
    full_log_probs: list[float]         # their mean log-prob under the full cache


def prompt_refs(lm, rec: PoolPrompt) -> PromptRefs:
    """The gold answer and, when it differs, the full cache's own answer (first 32 tokens each)."""
    rec._need("ids")
    answers = [rec.gold_ids]
    ids = lm.tokenizer.encode(rec.prediction, add_special_tokens=False)[:32]
    if ids and ids != rec.gold_ids[0].tolist():
        answers.append(torch.tensor([ids]))
    return PromptRefs(rec.ctx_ids, rec.q_ids, answers, [])


def answer_log_prob(logits: torch.Tensor, answer: torch.Tensor) -> float:
    """Mean log-prob of `answer` [1, A] given logits [A, V] where row i predicts token i."""
    lp = logits.float().log_softmax(-1).gather(-1, answer[0, :, None].to(logits.device))
    return float(lp.mean())


@torch.no_grad()
def masked_answer_log_probs(lm, kv: list[tuple[torch.Tensor, torch.Tensor]], masks, q_ids: torch.Tensor,
                            answer: torch.Tensor) -> list[float]:
    """Mean log-prob of `answer` [1, A] after `q_ids` [1, Q], read over a document's stored KV
    (`kv`: per layer keys, values [1, H, T, D]) with keep-masks: `masks` [B, T] (one mask for
    every layer and head), a list of [B, H, T] per layer, or None (the full cache, B = 1). Masking
    a slot equals evicting it; the B masks are one batched forward."""
    if masks is None:
        masks = torch.ones(1, kv[0][0].shape[2], dtype=torch.bool)
    per_layer = masks if isinstance(masks, list) else [masks[:, None]] * len(kv)
    b = per_layer[0].shape[0]
    cache = NammCache(lm.model.config, make_policy("full"))
    for layer, (k, v), m in zip(cache.layers, kv, per_layer):
        t = k.shape[2]
        layer.lazy_initialization(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
        layer._reserve(t)
        layer.keys[:, :, :t], layer.values[:, :, :t] = k, v
        layer.valid[:, :, :t] = m.expand(b, k.shape[1], t)
        layer.positions[:, :, :t] = torch.arange(t)
        layer.length = layer.seen = t
        layer.n_invalid = int((~layer.valid[:, :, :t]).sum())
    cont = torch.cat([q_ids, answer], 1).to(lm.device).expand(b, -1)
    logits = lm.model(input_ids=cont, past_key_values=cache, use_cache=True).logits
    rows = logits[:, -answer.shape[1] - 1:-1].float().log_softmax(-1)  # row i predicts answer token i
    lp = rows.gather(-1, answer.to(rows.device).expand(b, -1)[..., None])[..., 0]
    return lp.mean(-1).tolist()


def relative(lp: float, full_lp: float) -> float:
    return math.exp(min(0.0, lp - full_lp))  # better than the full cache counts as equal


@torch.no_grad()
def closed_loop_fitness(lm, refs: list[PromptRefs], policy: NammPolicy, n_up: int = 512) -> float:
    """The real fitness: the candidate reads each document with eviction, then the answers are
    teacher-forced. Needs `refs[i].full_log_probs` (see `Surrogate.prepare`)."""
    vals = []
    for ref in refs:
        for ans, full_lp in zip(ref.answers, ref.full_log_probs):
            cont = torch.cat([ref.q_ids, ans], 1)
            logits = continuation_logits(lm, ref.ctx_ids, cont, policy=policy, n_up=n_up)
            vals.append(relative(answer_log_prob(logits[-ans.shape[1]:], ans), full_lp))  # row i predicts token i
    return sum(vals) / len(vals)


class Surrogate:
    """Open-loop fitness over recorded prompts; the document KV is computed once per prompt."""

    def __init__(self, lm, recs: list[PoolPrompt], norm: RunningNorm, budget: float, block: int | None,
                 sinks: int, recent: float = 0.0, n_up: int = 512):
        self.lm, self.recs, self.norm, self.n_up = lm, recs, norm, n_up
        self.policy = ReplayNamm(budget=budget, norm=norm, threshold=False, block=block, sinks=sinks, recent=recent)
        self.refs: list[PromptRefs] = [prompt_refs(lm, r) for r in recs]
        self._kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._features: dict[int, list[list[tuple]]] = {}

    @torch.no_grad()
    def prepare(self, i: int) -> None:
        """Candidate-independent work for prompt i: its KV, its features, the full cache's log-probs."""
        if i in self._kv:
            return
        ref = self.refs[i]
        cache = NammCache(self.lm.model.config, make_policy("full"), n_up=self.n_up)
        prefill(self.lm, cache, ref.ctx_ids)
        self._kv[i] = [(layer.keys[:, :, :layer.length].clone(), layer.values[:, :, :layer.length].clone())
                       for layer in cache.layers]
        by_layer: list[list[tuple]] = [[] for _ in cache.layers]
        for u in self.recs[i].updates:
            x = scorer_inputs(self.norm, u["ema"].float(), u["positions"].long(), u["seen"])
            by_layer[u["layer"]].append((u["seen"], x))
        self._features[i] = [sorted(f, key=lambda t: t[0]) for f in by_layer]
        ref.full_log_probs = [self._answer_log_prob(i, None, a) for a in ref.answers]

    @property
    def budget(self):
        return self.policy.budget

    def keep_masks(self, i: int) -> list[torch.Tensor]:
        """Per layer [H, T] bool: what the current parameters keep after reading prompt i (open loop)."""
        length = self.refs[i].ctx_ids.shape[1]
        masks = []
        for layer, updates in enumerate(self._features[i]):
            keep = torch.ones(updates[0][1].shape[0] if updates else 1, length, dtype=torch.bool)
            for seen, x in updates:
                keep[:, :seen] = self.select(keep[:, :seen], x, seen, layer)
            masks.append(keep)
        return masks

    def select(self, alive: torch.Tensor, x: torch.Tensor, seen: int, layer: int = 0) -> torch.Tensor:
        """[H, S] keep-mask of one update: `NammPolicy.select` over the recorded features `x`
        [H, S, 25] of the slots still `alive` (slot i of a full-cache recording is position i)."""
        h, s = alive.shape
        empty = x.new_empty(1, h, s, 0)
        ctx = UpdateContext(layer_idx=layer, keys=empty, values=empty,
                            positions=torch.arange(s).expand(1, h, s), valid=alive[None], seen=seen, n_new=0)
        self.policy.features = x[None]
        return self.policy.select(ctx)[0] & alive

    def _answer_log_prob(self, i: int, masks: list[torch.Tensor] | None, answer: torch.Tensor) -> float:
        ref = self.refs[i]
        layer_masks = None if masks is None else [m[None] for m in masks]  # [1, H, T] per layer
        return masked_answer_log_probs(self.lm, self._kv[i], layer_masks, ref.q_ids, answer)[0]

    def fitness(self, params, prompts: list[int]) -> float:
        self.policy.set_params(params)
        vals = []
        for i in prompts:
            self.prepare(i)
            masks = self.keep_masks(i)
            for ans, full_lp in zip(self.refs[i].answers, self.refs[i].full_log_probs):
                vals.append(relative(self._answer_log_prob(i, masks, ans), full_lp))
        return sum(vals) / len(vals)
