"""Per-sample results and their aggregate per (policy, budget): scores, normalised scores, memory."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from namm.tasks import length_label


@dataclass
class SampleResult:
    task: str
    length: int | None
    index: int | None
    prediction: str
    score: float
    reference: str  # the full cache's answer on the same prompt
    full_score: float
    kept_fraction: float | None = None
    kv_bytes_peak: int | None = None
    kv_bytes_full_peak: int | None = None
    tokens_in: int | None = None
    seconds: float = 0.0
    kl: float | None = None  # lm_fidelity only: mean KL(full || policy) per token, in nats


@dataclass
class EvalRecord:
    """Aggregate of one policy at one budget over a list of samples."""

    policy: str
    budget: float | int | str | None
    query_aware: bool
    n_samples: int
    score: float  # mean score over samples
    full_score: float  # mean full-cache score over the same samples
    normalised: float | None  # mean over tasks of task score / task full score (the fitness)
    per_task: dict[str, float]
    per_task_full: dict[str, float]
    per_task_normalised: dict[str, float | None]
    per_cell: dict[str, float]  # "task@length" -> mean score
    per_cell_full: dict[str, float]
    per_length: dict[str, dict]  # length label -> score, kept_fraction, kv_bytes_peak, seconds
    kept_fraction: float | None  # mean over samples that report it
    kv_bytes_peak: int | None  # largest peak over the samples
    kv_bytes_peak_mean: float | None
    kv_bytes_full_peak: int | None  # what a full cache held for the largest prompt
    seconds: float  # total wall time of this policy's runs
    kl: float | None  # mean over lm_fidelity samples
    samples: list[SampleResult] = field(default_factory=list)

    def to_dict(self, with_samples: bool = True) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _group(results: list[SampleResult], key: Callable[[SampleResult], str]) -> dict[str, list[SampleResult]]:
    groups: dict[str, list[SampleResult]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return groups


def _cell(r: SampleResult) -> str:
    return f"{r.task}@{length_label(r.length)}" if r.length else r.task


def aggregate(policy: str, budget, query_aware: bool, results: list[SampleResult]) -> EvalRecord:
    by_task = _group(results, lambda r: r.task)
    per_task = {t: _mean(r.score for r in rs) for t, rs in by_task.items()}
    per_task_full = {t: _mean(r.full_score for r in rs) for t, rs in by_task.items()}
    # a task the full cache never solves says nothing about what the policy lost: left out
    per_task_norm = {t: (per_task[t] / per_task_full[t] if per_task_full[t] > 0 else None) for t in by_task}
    by_cell = _group(results, _cell)
    by_length = _group(results, lambda r: length_label(r.length) if r.length else "file")
    peaks = [r.kv_bytes_peak for r in results if r.kv_bytes_peak is not None]
    full_peaks = [r.kv_bytes_full_peak for r in results if r.kv_bytes_full_peak is not None]
    return EvalRecord(
        policy=policy, budget=budget, query_aware=query_aware, n_samples=len(results),
        score=_mean(r.score for r in results) or 0.0,
        full_score=_mean(r.full_score for r in results) or 0.0,
        normalised=_mean(per_task_norm.values()),
        per_task=per_task, per_task_full=per_task_full, per_task_normalised=per_task_norm,
        per_cell={c: _mean(r.score for r in rs) for c, rs in by_cell.items()},
        per_cell_full={c: _mean(r.full_score for r in rs) for c, rs in by_cell.items()},
        per_length={k: {"score": _mean(r.score for r in rs), "full_score": _mean(r.full_score for r in rs),
                        "kept_fraction": _mean(r.kept_fraction for r in rs),
                        "kv_bytes_peak": max((r.kv_bytes_peak for r in rs if r.kv_bytes_peak is not None), default=None),
                        "seconds": sum(r.seconds for r in rs)}
                    for k, rs in by_length.items()},
        kept_fraction=_mean(r.kept_fraction for r in results),
        kv_bytes_peak=max(peaks) if peaks else None,
        kv_bytes_peak_mean=_mean(peaks),
        kv_bytes_full_peak=max(full_peaks) if full_peaks else None,
        seconds=sum(r.seconds for r in results),
        kl=_mean(r.kl for r in results),
        samples=results,
    )
