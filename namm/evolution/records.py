"""What a run leaves on disk: the checkpoint (atomic), the per-generation logs and curves, and
exported NAMM policy files."""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import EvolveConfig

CHECKPOINT = "checkpoint.pkl"


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
