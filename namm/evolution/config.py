"""The evolve config: a JSON file validated into `EvolveConfig`; every error names its key."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A bad evolve config: the message says which key and why."""



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
    plot_every: int = 1               # redraw curves.png every k generations (0: only at the end)
    out_dir: str = "runs/evolve"

    @property
    def mu(self) -> int:
        return max(1, int(round(self.population * self.elite_ratio)))

    def to_dict(self) -> dict:
        return asdict(self)


_KNOWN = {f for f in EvolveConfig.__dataclass_fields__}
# Keys that configs once had and no longer mean anything: dropped on reading, so that runs and
# checkpoints saved before their removal still resume and export.
_RETIRED = {"synthetic_sleep"}


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
    data = {k: v for k, v in data.items() if k not in _RETIRED}
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
    for key in ("fidelity_weight", "memory_weight"):
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
