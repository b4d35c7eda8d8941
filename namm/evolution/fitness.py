"""Fitness of a candidate: the real one (TaskFitness, the model on train prompts) and a synthetic
one (no model) for tests and smoke runs. Candidate-independent work is done once in `prepare`."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import EvolveConfig


@dataclass
class CandidateResult:
    fitness: float
    normalised: float             # mean over tasks of score / full score
    kept_fraction: float          # mean KV entries kept at answer time (fraction of tokens read)
    fidelity: float | None = None  # mean probability of the full cache's answer tokens
    per_task: dict = field(default_factory=dict)
    forwards: int = 0
    seconds: float = 0.0


class SyntheticFitness:
    """No model: a shifted sphere (maximised at x = 0.3), for tests and smoke runs."""

    def __init__(self, cfg: EvolveConfig):
        self.dim = cfg.synthetic_dim
        self.target = np.full(self.dim, 0.3)
        self.norm_state = None

    def set_stage(self, tasks: list[str]) -> None:
        pass

    def prepare(self, log=print) -> None:
        pass

    def __call__(self, params: np.ndarray, split: str = "train") -> CandidateResult:
        f = -float(np.sum((np.asarray(params) - self.target) ** 2))
        return CandidateResult(fitness=f, normalised=f, kept_fraction=1.0, forwards=0, seconds=0.0)


@dataclass
class _Prompt:
    sample: object
    ctx_ids: object           # [1, T] document part
    q_ids: object             # [1, Q] question part
    ref_ids: object           # [1, R] the full cache's answer tokens (for the fidelity term)
    full_score: float
    max_new_tokens: int
    prefix: list | None = None  # cache snapshot after the first n_up tokens, update held back


class TaskFitness:
    """Runs candidates on train prompts with the real model; see the module docstring."""

    def __init__(self, cfg: EvolveConfig, lm=None, out_dir: Path | None = None, norm_state: dict | None = None):
        import torch

        torch.set_num_threads(max(1, min(cfg.threads, os.cpu_count() or 1)))
        import namm

        self.cfg = cfg
        self.lm = lm if lm is not None else (namm.load_model(cfg.model) if cfg.model else namm.load_model())
        self.dim = namm.NammPolicy.num_params() if hasattr(namm, "NammPolicy") else None
        from namm.policies.namm import NammPolicy

        self.dim = NammPolicy.num_params()
        self.out_dir = out_dir
        self.norm_state = norm_state
        self.prompts: dict[str, list[_Prompt]] = {}  # split -> prompts of all stages' tasks
        self.tasks: list[str] = []
        self._forwards = 0
        self._hook = self.lm.model.register_forward_pre_hook(self._count)

    def close(self) -> None:
        self._hook.remove()

    def _count(self, *_):
        self._forwards += 1

    # ---- preparation (once per run) ----------------------------------------------------------
    def _make_prompts(self, split: str, tasks: list[str], lengths: list[int], n_per_task: int, start: int,
                      log) -> list[_Prompt]:
        import torch

        from namm.evaluation import ReferenceCache, evaluate
        from namm.prompts import encode_text, split_prompt
        from namm.tasks import make_samples

        samples = make_samples(tasks, lengths, n_per_task, split, start=start)
        refs = ReferenceCache(self.out_dir / "references.json" if self.out_dir else None)
        t0 = time.perf_counter()
        rec = evaluate(self.lm, samples, "full", None, n_up=self.cfg.n_up, max_new_tokens=self.cfg.max_new_tokens,
                       reference_cache=refs)
        log(f"full cache on {len(samples)} {split} prompts: score {rec.score:.2f} "
            f"({time.perf_counter() - t0:.0f} s, cached in {refs.path})")
        tok = self.lm.tokenizer
        out = []
        for s, r in zip(samples, rec.samples):
            if self.cfg.only_solved and r.full_score <= 0:
                continue
            parts = split_prompt(tok, s.context, s.question, None, query_aware=False)
            mnt = self.cfg.max_new_tokens or s.meta.get("max_new_tokens") or 32
            ref = tok.encode(r.reference, add_special_tokens=False)[:mnt] or [tok.eos_token_id]
            out.append(_Prompt(s, encode_text(tok, parts.context), encode_text(tok, parts.question),
                               torch.tensor([ref]), r.full_score, mnt))
        kept = {t: sum(p.sample.task == t for p in out) for t in tasks}
        log(f"{split}: {len(out)} of {len(samples)} prompts kept (full cache right): {kept}")
        return out

    def _prefix(self, p: _Prompt):
        """Cache after the first n_up document tokens with the update held back (candidate-free)."""
        from namm.memory import NammCache
        from namm.policies.namm import NammPolicy

        n_up = self.cfg.n_up
        if not self.cfg.reuse_prefix or p.ctx_ids.shape[1] < n_up:
            return None
        # a larger interval holds the update back; the forward itself does not depend on it
        cache = NammCache(self.lm.model.config, NammPolicy(budget=self.cfg.budget), n_up=2 * n_up)
        import torch

        with torch.no_grad():
            self.lm.model(input_ids=p.ctx_ids[:, :n_up].to(self.lm.device), past_key_values=cache, use_cache=True,
                          logits_to_keep=1)
        snap = cache.snapshot()
        for s in snap:  # drop the extra headroom the larger interval reserved
            n = s["length"]
            for k in ("keys", "values", "valid", "positions"):
                s[k] = s[k][:, :, :n].contiguous()
        return snap

    def prepare(self, log=print) -> None:
        from namm.features import RunningNorm

        all_tasks = list(dict.fromkeys(t for st in self.cfg.stages for t in st.tasks))
        self.prompts["train"] = self._make_prompts(self.cfg.split, all_tasks, self.cfg.lengths, self.cfg.n_per_task,
                                                   self.cfg.start_index, log)
        if not self.prompts["train"]:
            raise RuntimeError("the full cache solves none of the train prompts: nothing to learn from; "
                               "use shorter lengths or other tasks")
        if self.cfg.validate_every:
            self.prompts["validation"] = self._make_prompts(
                "validation", all_tasks, self.cfg.validation_lengths or self.cfg.lengths,
                self.cfg.validation_n_per_task, 0, log)
        t0 = time.perf_counter()
        for prompts in self.prompts.values():
            for p in prompts:
                p.prefix = self._prefix(p)
        log(f"prefix snapshots: {time.perf_counter() - t0:.1f} s")
        if self.norm_state is None:
            # the zero-parameter NAMM reads the train prompts; its feature statistics are then frozen
            t0 = time.perf_counter()
            norm = RunningNorm()
            self._run_policy(np.zeros(self.dim, dtype=np.float32), self.prompts["train"], norm=norm)
            norm.frozen = True
            self.norm_state = norm.state_dict()
            log(f"normalisation statistics from {len(self.prompts['train'])} prompts "
                f"({norm.count:.0f} token-frames, {time.perf_counter() - t0:.0f} s), frozen")

    def set_stage(self, tasks: list[str]) -> None:
        self.tasks = list(tasks)

    def norm(self):
        from namm.features import RunningNorm

        n = RunningNorm.from_state_dict(self.norm_state)
        n.frozen = True
        return n

    # ---- one candidate -----------------------------------------------------------------------
    def _run_one(self, p: _Prompt, policy) -> tuple[str, float, float, float | None]:
        """(answer, score, kept fraction, fidelity) of one prompt: what ``namm.generate`` would
        answer, with the candidate-free first chunk restored from its snapshot."""
        import torch

        from namm.generate import stop_token_ids, greedy_decode, prefill
        from namm.memory import NammCache
        from namm.tasks import score_answer

        lm = self.lm
        cache = NammCache(lm.model.config, policy, n_up=self.cfg.n_up)
        rest = p.ctx_ids
        if p.prefix is not None:
            cache.restore(p.prefix)
            for layer, s in zip(cache.layers, p.prefix):
                layer.dtype, layer.device = s["keys"].dtype, s["keys"].device
            cache.flush()  # the update the first chunk's forward would have run at every layer
            rest = p.ctx_ids[:, self.cfg.n_up:]
        with torch.no_grad():
            if rest.shape[1]:
                prefill(lm, cache, rest)
            cache.flush()  # document read: compress its tail before the question
            logits = prefill(lm, cache, p.q_ids)
            kept = cache.kept_fraction()
            fidelity = None
            if self.cfg.fidelity_weight > 0:
                snap = cache.snapshot()
                ref = p.ref_ids.to(lm.device)
                lp = [logits.log_softmax(-1)[0]]
                if ref.shape[1] > 1:
                    out = lm.model(input_ids=ref[:, :-1], past_key_values=cache, use_cache=True)
                    lp.append(out.logits[0].log_softmax(-1))
                lp = torch.cat([x.reshape(-1, x.shape[-1]) for x in lp]).float()
                fidelity = float(lp.gather(1, ref[0][:, None]).mean().exp())
                cache.restore(snap)
            ids = greedy_decode(lm, cache, logits, p.max_new_tokens, stop_token_ids(lm.tokenizer))
        text = lm.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return text, score_answer(text, p.sample.answers, p.sample.metric), kept, fidelity

    def _run_policy(self, params, prompts: list[_Prompt], norm=None):
        from namm.policies.namm import NammPolicy

        policy = NammPolicy(params=np.asarray(params, dtype=np.float32), budget=self.cfg.budget,
                            norm=norm if norm is not None else self.norm(), threshold=self.cfg.threshold)
        return [(p, *self._run_one(p, policy)[1:]) for p in prompts]

    def __call__(self, params: np.ndarray, split: str = "train") -> CandidateResult:
        t0, f0 = time.perf_counter(), self._forwards
        prompts = [p for p in self.prompts[split] if not self.tasks or p.sample.task in self.tasks or split != "train"]
        rows = self._run_policy(params, prompts)
        by_task: dict[str, list] = {}
        for p, score, kept, fid in rows:
            by_task.setdefault(p.sample.task, []).append((score, p.full_score, kept, fid))
        # a task the full cache never solves says nothing about what was lost: left out (as in evaluate)
        per_task = {t: sum(r[0] for r in rs) / sum(r[1] for r in rs) for t, rs in by_task.items()
                    if sum(r[1] for r in rs) > 0}
        normalised = float(np.mean(list(per_task.values()))) if per_task else 0.0
        kept = float(np.mean([r[2] for r in rows]))
        fids = [r[3] for r in rows if r[3] is not None]
        fidelity = float(np.mean(fids)) if fids else None
        fitness = normalised + self.cfg.fidelity_weight * (fidelity or 0.0) + self.cfg.memory_weight * (1 - kept)
        return CandidateResult(fitness, normalised, kept, fidelity, per_task, self._forwards - f0,
                               time.perf_counter() - t0)
