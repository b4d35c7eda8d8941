"""CMA-ES training of a NAMM (``namm evolve --config FILE``, or ``python -m namm.evolve``).

What it does, following the paper (Sakana AI, arXiv 2410.13166) where it can on 2 CPU cores:

* CMA-ES (the ``cmaes`` library) over the scorer's flat parameter vector; the mean starts at
  zero (all-zero parameters keep everything) and the mean is the solution that ships.
* Fitness of a candidate = mean over tasks of (task score with the candidate / full-cache task
  score on the same prompts), from train-split prompts, plus two optional, reported terms:
  ``fidelity_weight`` x mean probability of the full cache's answer tokens under the candidate
  (a smooth tie-breaker for the coarse exact-match scores) and ``memory_weight`` x (1 - kept
  fraction).
* Incremental stages: each stage adds tasks and continues from the previous stage's optimizer.
* Work that does not depend on the candidate is done once: the full-cache answers, the
  feature normalisation statistics (the zero-parameter NAMM reads the train prompts, then the
  statistics are frozen and stored), and the first ``n_up`` tokens of every prompt: their
  forward pass is the same for every candidate, so it is run once with the update held back,
  kept as a cache snapshot, and each candidate restores it and runs the update it would have
  run inside that forward (exactly the same arithmetic; tests check it against ``generate``).
* A checkpoint after every generation (atomic: temp file + ``os.replace``) with the pickled
  optimizer, its RNG state, the generation, stage, logs and normalisation; ``--resume``
  continues from it with the same state, also after ``kill -9``.
* Logs: ``log.json``, ``log.csv`` and ``curves.png`` in the output folder after every generation.

The config is a JSON file (see ``configs/evolve-smollm2.json`` and ``docs/evolution.md``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import pickle
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

CHECKPOINT = "checkpoint.pkl"


class ConfigError(ValueError):
    """A bad evolve config: the message says which key and why."""


# --------------------------------------------------------------------------- config


@dataclass
class Stage:
    tasks: list[str]
    generations: int


@dataclass
class EvolveConfig:
    stages: list[Stage]
    model: str | None = None
    fitness: str = "tasks"            # "tasks" (the real one) or "synthetic" (no model; tests, smoke runs)
    population: int = 32
    elite_ratio: float = 0.5
    sigma: float = 0.065
    optimizer: str = "cma"            # "cma" (full covariance) or "sep" (diagonal, for many parameters)
    seed: int = 0
    budget: float | int | None = 0.3  # top-k cap on top of NAMM's score >= 0 threshold
    threshold: bool = True            # False: rank-only, the cap alone decides (needs a budget)
    n_up: int = 512
    lengths: list[int] = field(default_factory=lambda: [1024])
    n_per_task: int = 2
    start_index: int = 0
    split: str = "train"
    only_solved: bool = True          # drop train prompts the full cache gets wrong (they carry no signal)
    max_new_tokens: int | None = 16   # overrides the tasks' own answer lengths (None: the task's)
    fidelity_weight: float = 0.0
    memory_weight: float = 0.0
    reuse_prefix: bool = True
    threads: int = 2
    validate_every: int = 0           # evaluate the mean on validation prompts every k generations (0: never)
    validation_n_per_task: int = 2
    validation_lengths: list[int] | None = None
    synthetic_dim: int = 16
    synthetic_sleep: float = 0.0
    plot_every: int = 1               # redraw curves.png every k generations (0: only at the end)
    out_dir: str = "runs/evolve"

    @property
    def mu(self) -> int:
        return max(1, int(round(self.population * self.elite_ratio)))

    def to_dict(self) -> dict:
        return asdict(self)


_KNOWN = {f for f in EvolveConfig.__dataclass_fields__}


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _lengths(value, key: str) -> list[int]:
    from namm.tasks import parse_length

    _require(isinstance(value, list) and value, f"config '{key}' must be a non-empty list of lengths, got {value!r}")
    out = []
    for v in value:
        try:
            out.append(int(v) if isinstance(v, int) else parse_length(str(v)))
        except ValueError as exc:
            raise ConfigError(f"config '{key}': bad length {v!r} ({exc})")
    _require(all(n > 0 for n in out), f"config '{key}': lengths must be positive, got {value!r}")
    return out


def config_from_dict(data: dict) -> EvolveConfig:
    """Validate a config dict; every problem is a ConfigError naming the key."""
    _require(isinstance(data, dict), f"the config must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KNOWN)
    _require(not unknown, f"unknown config keys: {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    _require("stages" in data, "config needs 'stages': a list of {\"tasks\": [...], \"generations\": N}")
    raw = data["stages"]
    _require(isinstance(raw, list) and raw, "config 'stages' must be a non-empty list")
    fitness = data.get("fitness", "tasks")
    _require(fitness in ("tasks", "synthetic"), f"config 'fitness' must be 'tasks' or 'synthetic', got {fitness!r}")
    stages = []
    for i, st in enumerate(raw):
        _require(isinstance(st, dict), f"stage {i + 1} must be an object with 'tasks' and 'generations'")
        extra = set(st) - {"tasks", "generations"}
        _require(not extra, f"stage {i + 1}: unknown keys {sorted(extra)} (expected 'tasks', 'generations')")
        tasks, gens = st.get("tasks"), st.get("generations")
        _require(isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks),
                 f"stage {i + 1}: 'tasks' must be a non-empty list of task names")
        _require(isinstance(gens, int) and not isinstance(gens, bool) and gens >= 1,
                 f"stage {i + 1}: 'generations' must be an integer >= 1, got {gens!r}")
        if fitness == "tasks":
            from namm.tasks import available_tasks

            bad = [t for t in tasks if t not in available_tasks()]
            _require(not bad, f"stage {i + 1}: unknown tasks {bad}; available: {', '.join(available_tasks())}")
            _require("lm_fidelity" not in tasks, f"stage {i + 1}: lm_fidelity has no answer to score; not usable here")
        stages.append(Stage(list(tasks), gens))
    kw = {k: v for k, v in data.items() if k != "stages"}
    cfg = EvolveConfig(stages=stages, **kw)

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    _require(is_int(cfg.population) and cfg.population >= 2, f"config 'population' must be an integer >= 2, got {cfg.population!r}")
    _require(isinstance(cfg.elite_ratio, (int, float)) and 0 < cfg.elite_ratio < 1,
             f"config 'elite_ratio' must be in (0, 1), got {cfg.elite_ratio!r}")
    _require(1 <= cfg.mu < cfg.population,
             f"config 'elite_ratio' {cfg.elite_ratio} with population {cfg.population} gives {cfg.mu} parents; "
             f"need between 1 and population-1")
    _require(isinstance(cfg.sigma, (int, float)) and cfg.sigma > 0, f"config 'sigma' must be > 0, got {cfg.sigma!r}")
    _require(cfg.optimizer in ("cma", "sep"), f"config 'optimizer' must be 'cma' or 'sep', got {cfg.optimizer!r}")
    _require(cfg.optimizer == "cma" or cfg.mu == cfg.population // 2,
             "config 'elite_ratio' other than 0.5 needs optimizer 'cma'")
    _require(is_int(cfg.seed), f"config 'seed' must be an integer, got {cfg.seed!r}")
    if cfg.budget is not None:
        from namm.policies.base import validate_budget

        try:
            cfg.budget = validate_budget(cfg.budget)
        except ValueError as exc:
            raise ConfigError(f"config 'budget': {exc}")
    _require(isinstance(cfg.threshold, bool), f"config 'threshold' must be true or false, got {cfg.threshold!r}")
    _require(cfg.threshold or cfg.budget is not None, "config 'threshold': false needs a 'budget'")
    _require(is_int(cfg.n_up) and cfg.n_up > 0 and cfg.n_up % 16 == 0,
             f"config 'n_up' must be a positive multiple of 16, got {cfg.n_up!r}")
    cfg.lengths = _lengths(cfg.lengths, "lengths")
    if cfg.validation_lengths is not None:
        cfg.validation_lengths = _lengths(cfg.validation_lengths, "validation_lengths")
    for key in ("n_per_task", "threads", "validation_n_per_task", "synthetic_dim"):
        v = getattr(cfg, key)
        _require(is_int(v) and v >= 1, f"config '{key}' must be an integer >= 1, got {v!r}")
    for key in ("start_index", "validate_every", "plot_every"):
        v = getattr(cfg, key)
        _require(is_int(v) and v >= 0, f"config '{key}' must be an integer >= 0, got {v!r}")
    _require(cfg.split in ("train", "validation", "test"), f"config 'split' must be train/validation/test, got {cfg.split!r}")
    _require(cfg.max_new_tokens is None or (is_int(cfg.max_new_tokens) and cfg.max_new_tokens >= 1),
             f"config 'max_new_tokens' must be an integer >= 1 or null, got {cfg.max_new_tokens!r}")
    for key in ("fidelity_weight", "memory_weight", "synthetic_sleep"):
        v = getattr(cfg, key)
        _require(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f"config '{key}' must be a number >= 0, got {v!r}")
    _require(isinstance(cfg.out_dir, str) and cfg.out_dir, "config 'out_dir' must be a folder path")
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> EvolveConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"config file {path}: YAML needs pyyaml; write the config as JSON instead")
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    if isinstance(data, dict) and overrides:
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return config_from_dict(data)


# --------------------------------------------------------------------------- optimizer


def set_elite_count(opt, mu: int) -> None:
    """cmaes' CMA fixes mu = population // 2; recompute its weights and rates for another mu
    (same formulas as cmaes.CMA.__init__, Hansen's tutorial eq. 49-56)."""
    n, lam = opt._n_dim, opt._popsize
    if mu == opt._mu:
        return
    wp = np.array([math.log((lam + 1) / 2) - math.log(i + 1) for i in range(lam)])
    # log((lam+1)/2) puts the sign change at lam//2; shift so exactly mu weights are positive
    wp = wp - (wp[mu - 1] + wp[mu]) / 2
    mu_eff = np.sum(wp[:mu]) ** 2 / np.sum(wp[:mu] ** 2)
    mu_eff_minus = np.sum(wp[mu:]) ** 2 / np.sum(wp[mu:] ** 2)
    c1 = 2 / ((n + 1.3) ** 2 + mu_eff)
    cmu = min(1 - c1 - 1e-8, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff))
    min_alpha = min(1 + c1 / cmu, 1 + (2 * mu_eff_minus) / (mu_eff + 2), (1 - c1 - cmu) / (n * cmu))
    pos, neg = np.sum(wp[wp > 0]), np.sum(np.abs(wp[wp < 0]))
    opt._weights = np.where(wp >= 0, wp / pos, min_alpha / neg * wp)
    opt._mu, opt._mu_eff, opt._c1, opt._cmu = mu, mu_eff, c1, cmu
    opt._c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    opt._d_sigma = 1 + 2 * max(0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + opt._c_sigma
    opt._cc = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)


def make_optimizer(cfg: EvolveConfig, dim: int):
    from cmaes import CMA, SepCMA

    mean = np.zeros(dim)
    if cfg.optimizer == "sep":
        return SepCMA(mean=mean, sigma=cfg.sigma, seed=cfg.seed, population_size=cfg.population)
    opt = CMA(mean=mean, sigma=cfg.sigma, seed=cfg.seed, population_size=cfg.population)
    set_elite_count(opt, cfg.mu)
    return opt


def dump_optimizer(opt) -> dict:
    # cmaes drops its RandomState when pickled: keep its state beside it
    return {"pickle": pickle.dumps(opt), "rng": opt._rng.get_state()}


def load_optimizer(blob: dict):
    opt = pickle.loads(blob["pickle"])
    opt._rng.set_state(blob["rng"])
    return opt


# --------------------------------------------------------------------------- fitness


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
        self.sleep = cfg.synthetic_sleep
        self.target = np.full(self.dim, 0.3)
        self.norm_state = None

    def set_stage(self, tasks: list[str]) -> None:
        pass

    def prepare(self, log=print) -> None:
        pass

    def __call__(self, params: np.ndarray, split: str = "train") -> CandidateResult:
        if self.sleep:
            time.sleep(self.sleep)
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
        from namm.generate import _encode
        from namm.prompts import split_prompt
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
            out.append(_Prompt(s, _encode(tok, parts.context), _encode(tok, parts.question),
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

        from namm.generate import _stop_ids, greedy_decode, prefill
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
            ids = greedy_decode(lm, cache, logits, p.max_new_tokens, _stop_ids(lm.tokenizer))
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


# --------------------------------------------------------------------------- state, logs


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file is meant to be shared (package data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


LOG_FIELDS = ["generation", "stage", "stage_generation", "tasks", "best_fitness", "mean_fitness", "worst_fitness",
              "mean_solution_fitness", "mean_solution_normalised", "mean_solution_kept", "mean_solution_fidelity",
              "population_kept", "best_normalised", "sigma", "seconds", "forwards", "validation_normalised",
              "validation_kept"]


def write_logs(out_dir: Path, logs: list[dict], title: str = "", plot: bool = True) -> None:
    atomic_write_text(out_dir / "log.json", json.dumps(logs, indent=1))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in logs:
        w.writerow({k: (" ".join(v) if isinstance(v, list) else v) for k, v in row.items()})
    atomic_write_text(out_dir / "log.csv", buf.getvalue())
    if plot:
        plot_curves(logs, out_dir / "curves.png", title)


def plot_curves(logs: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not logs:
        return
    g = [r["generation"] for r in logs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(g, [r["best_fitness"] for r in logs], ".-", label="best candidate")
    ax1.plot(g, [r["mean_fitness"] for r in logs], ".-", label="population mean")
    ax1.plot(g, [r["mean_solution_fitness"] for r in logs], "o-", label="CMA mean (the solution)", lw=2)
    ax1.plot(g, [r["mean_solution_normalised"] for r in logs], "s:", label="CMA mean, normalised score only")
    val = [(r["generation"], r["validation_normalised"]) for r in logs if r.get("validation_normalised") is not None]
    if val:
        ax1.plot(*zip(*val), "o--", label="CMA mean, validation (normalised)")
    for r0, r1 in zip(logs, logs[1:]):
        if r1["stage"] != r0["stage"]:
            ax1.axvline(r1["generation"] - 0.5, color="grey", ls=":")
    ax1.set_xlabel("generation")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_ylabel("fitness")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(g, [r["mean_solution_kept"] for r in logs], "o-", label="kept fraction (CMA mean)")
    ax2.plot(g, [r["population_kept"] for r in logs], ".-", label="kept fraction (population)")
    ax2.set_xlabel("generation")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_ylabel("KV kept fraction")
    ax3 = ax2.twinx()
    ax3.plot(g, [r["sigma"] for r in logs], color="tab:red", ls="--", label="sigma")
    ax3.set_ylabel("sigma")
    ax2.legend(loc="upper left", fontsize=8)
    ax3.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


@dataclass
class RunState:
    config: dict
    optimizer: dict
    generation: int = 0          # generations finished
    stage: int = 0               # index of the current stage
    stage_generation: int = 0    # generations finished in the current stage
    logs: list = field(default_factory=list)
    norm: dict | None = None
    best_validated: dict | None = None  # {"generation", "normalised", "kept", "params"}
    zero_validation: dict | None = None
    wall_seconds: float = 0.0
    np_random: tuple | None = None
    torch_random: object = None
    done: bool = False


def save_state(out_dir: Path, state: RunState) -> None:
    state.np_random = np.random.get_state()
    try:
        import torch

        state.torch_random = torch.get_rng_state()
    except ImportError:
        pass
    atomic_write_bytes(out_dir / CHECKPOINT, pickle.dumps(asdict(state)))


def load_state(out_dir: Path) -> RunState:
    path = out_dir / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume in {out_dir} ({CHECKPOINT} missing)")
    state = RunState(**pickle.loads(path.read_bytes()))
    if state.np_random is not None:
        np.random.set_state(state.np_random)
    if state.torch_random is not None:
        import torch

        torch.set_rng_state(state.torch_random)
    return state


def save_policy(path: Path, params: np.ndarray, norm_state: dict | None, cfg: EvolveConfig, **extra) -> None:
    """A NammPolicy checkpoint (params, frozen norm, budget) plus the training config."""
    import torch

    from namm.features import RunningNorm
    from namm.policies.namm import NammPolicy

    norm = RunningNorm.from_state_dict(norm_state) if norm_state else RunningNorm()
    norm.frozen = True
    pol = NammPolicy(params=np.asarray(params, dtype=np.float32), budget=cfg.budget, norm=norm,
                     threshold=cfg.threshold)
    buf = io.BytesIO()
    torch.save({**pol.state_dict(), "config": cfg.to_dict(), **extra}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


# --------------------------------------------------------------------------- the loop


def run(cfg: EvolveConfig, resume: bool = False, fitness=None, log: Callable[[str], None] | None = None,
        progress: bool = True, stop_after: int | None = None) -> RunState:
    """Run (or resume) the evolution described by ``cfg``; returns the final state.

    ``fitness`` (an object like TaskFitness) is built from the config when not given.
    ``stop_after`` stops after that many generations in this call (tests)."""
    from tqdm import tqdm

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if resume:
        state = load_state(out_dir)
        saved = config_from_dict(state.config)
        if saved.to_dict() != cfg.to_dict():
            diff = sorted(k for k in cfg.to_dict() if cfg.to_dict()[k] != saved.to_dict()[k])
            log(f"resume: using the checkpoint's config (the given one differs in: {', '.join(diff)})")
        cfg = saved
        opt = load_optimizer(state.optimizer)
        log(f"resumed {out_dir / CHECKPOINT}: generation {state.generation}, stage {state.stage + 1}, "
            f"sigma {opt._sigma:.4g}")
    else:
        if (out_dir / CHECKPOINT).exists():
            raise FileExistsError(f"{out_dir / CHECKPOINT} exists: pass --resume to continue it, or another out_dir")
        state = None
        opt = None
    if fitness is None:
        fitness = (SyntheticFitness(cfg) if cfg.fitness == "synthetic"
                   else TaskFitness(cfg, out_dir=out_dir, norm_state=state.norm if state else None))
    if state is None:
        fitness.prepare(log)
        opt = make_optimizer(cfg, fitness.dim)
        state = RunState(config=cfg.to_dict(), optimizer=dump_optimizer(opt), norm=fitness.norm_state)
        if cfg.validate_every and cfg.fitness == "tasks":
            z = fitness(np.zeros(fitness.dim), split="validation")
            state.zero_validation = {"normalised": z.normalised, "kept": z.kept_fraction, "per_task": z.per_task}
            log(f"validation, zero parameters + budget {cfg.budget}: normalised {z.normalised:.3f}, "
                f"kept {z.kept_fraction:.3f}")
        save_state(out_dir, state)
    else:
        fitness.prepare(log)
    title = f"NAMM CMA-ES, {cfg.model or 'SmolLM2-135M-Instruct'}, pop {cfg.population}, budget {cfg.budget}"
    done_here = 0
    while state.stage < len(cfg.stages):
        stage = cfg.stages[state.stage]
        if state.stage_generation >= stage.generations:
            state.stage += 1
            state.stage_generation = 0
            continue
        if stop_after is not None and done_here >= stop_after:
            return state
        fitness.set_stage(stage.tasks)
        t0 = time.perf_counter()
        results, cands = [], []
        bar = tqdm(total=cfg.population + 1, desc=f"gen {state.generation + 1} stage {state.stage + 1}",
                   unit="cand", file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True)
        for _ in range(cfg.population):
            x = opt.ask()
            r = fitness(x)
            cands.append(x)
            results.append(r)
            bar.update(1)
            bar.set_postfix_str(f"fit {r.fitness:.3f} kept {r.kept_fraction:.2f}")
        opt.tell([(x, -r.fitness) for x, r in zip(cands, results)])  # cmaes minimises
        mean = np.array(opt.mean, copy=True)
        m = fitness(mean)
        bar.update(1)
        bar.close()
        fits = [r.fitness for r in results]
        best = int(np.argmax(fits))
        row = {"generation": state.generation + 1, "stage": state.stage + 1,
               "stage_generation": state.stage_generation + 1, "tasks": list(stage.tasks),
               "best_fitness": fits[best], "mean_fitness": float(np.mean(fits)), "worst_fitness": float(min(fits)),
               "best_normalised": results[best].normalised,
               "mean_solution_fitness": m.fitness, "mean_solution_normalised": m.normalised,
               "mean_solution_kept": m.kept_fraction, "mean_solution_fidelity": m.fidelity,
               "mean_solution_per_task": m.per_task,
               "population_kept": float(np.mean([r.kept_fraction for r in results])),
               "sigma": float(opt._sigma), "forwards": sum(r.forwards for r in results) + m.forwards,
               "validation_normalised": None, "validation_kept": None}
        state.generation += 1
        state.stage_generation += 1
        if cfg.validate_every and cfg.fitness == "tasks" and (
                state.generation % cfg.validate_every == 0 or state.stage_generation == stage.generations):
            v = fitness(mean, split="validation")
            row["validation_normalised"], row["validation_kept"] = v.normalised, v.kept_fraction
            bv = state.best_validated
            if bv is None or v.normalised > bv["normalised"]:
                state.best_validated = {"generation": state.generation, "normalised": v.normalised,
                                        "kept": v.kept_fraction, "per_task": v.per_task, "params": mean}
        row["seconds"] = time.perf_counter() - t0
        state.wall_seconds += row["seconds"]
        state.logs.append(row)
        state.optimizer = dump_optimizer(opt)
        if state.stage_generation >= stage.generations:
            state.stage += 1
            state.stage_generation = 0
        state.done = state.stage >= len(cfg.stages)
        write_logs(out_dir, state.logs, title,
                   plot=state.done or (cfg.plot_every > 0 and state.generation % cfg.plot_every == 0))
        if cfg.fitness == "tasks":
            save_policy(out_dir / "mean.pt", mean, state.norm, cfg, generation=state.generation)
        save_state(out_dir, state)  # last: a checkpoint never points past the logs it describes
        log(f"gen {row['generation']:3d} stage {row['stage']} | best {row['best_fitness']:.3f} "
            f"pop {row['mean_fitness']:.3f} | mean-solution {m.fitness:.3f} (norm {m.normalised:.3f}, "
            f"kept {m.kept_fraction:.3f}) | sigma {row['sigma']:.4f} | {row['seconds']:.0f} s, {row['forwards']} fwd"
            + (f" | val {row['validation_normalised']:.3f}" if row["validation_normalised"] is not None else ""))
        done_here += 1
    if not state.done:
        state.done = True
        write_logs(out_dir, state.logs, title)
    save_state(out_dir, state)
    return state


# --------------------------------------------------------------------------- CLI


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="JSON config (see configs/evolve-smollm2.json)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pkl")
    p.add_argument("--model", default=None, help="local model path (overrides the config's 'model')")
    p.add_argument("--out-dir", default=None, help="output folder (overrides the config's 'out_dir')")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="do not train: write the run's solution as a NAMM checkpoint (params, frozen "
                        "normalisation, budget, config) to PATH, e.g. namm/checkpoints/smollm2-135m.pt")
    p.add_argument("--export-which", default="mean", choices=["mean", "best-validated", "zero"],
                   help="with --export: the last CMA mean, the mean that scored best on validation, or zeros")


def export_solution(cfg: EvolveConfig, path: str | Path, which: str = "mean") -> dict:
    """Write a finished (or stopped) run's solution as a NammPolicy checkpoint; returns its metadata."""
    state = load_state(Path(cfg.out_dir))
    cfg = config_from_dict(state.config)
    opt = load_optimizer(state.optimizer)
    if which == "best-validated":
        if not state.best_validated:
            raise ValueError("the run has no validated mean (validate_every was 0 or no validation ran yet)")
        params, gen = state.best_validated["params"], state.best_validated["generation"]
    elif which == "zero":
        params, gen = np.zeros_like(opt.mean), 0
    else:
        params, gen = opt.mean, state.generation
    meta = {"which": which, "generation": gen, "generations_run": state.generation,
            "wall_seconds": state.wall_seconds, "zero_validation": state.zero_validation,
            "best_validated": {k: v for k, v in (state.best_validated or {}).items() if k != "params"} or None,
            "last_log": state.logs[-1] if state.logs else None}
    save_policy(Path(path), params, state.norm, cfg, training=meta)
    return meta


def cmd_evolve(args) -> int:
    try:
        cfg = load_config(args.config, {"model": args.model, "out_dir": args.out_dir})
    except ConfigError as exc:
        print(f"namm evolve: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.export:
            meta = export_solution(cfg, args.export, args.export_which)
            print(json.dumps({"exported": args.export, **meta}, default=str))
            return 0
        state = run(cfg, resume=args.resume, progress=not args.no_progress)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"namm evolve: error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.out_dir)
    print(json.dumps({"generations": state.generation, "wall_seconds": round(state.wall_seconds, 1),
                      "out_dir": str(out), "last": state.logs[-1] if state.logs else None}, default=str))
    return 0


def add_evolve_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evolve", help="train a NAMM with CMA-ES", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=cmd_evolve)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m namm.evolve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return cmd_evolve(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
