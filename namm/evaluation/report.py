"""Tables, CSV and plots of evaluation records."""
from __future__ import annotations

import csv
import math
from pathlib import Path


from .results import EvalRecord, _mean


_SHORT = {"passkey": "pass", "niah_single": "niah", "niah_multikey": "mkey", "niah_multivalue": "mval",
          "variable_tracking": "vt", "common_words": "cwe", "doc_qa": "docqa", "doc_source": "docsrc",
          "code_constant": "const", "code_calls": "calls", "code_returns": "ret", "lm_fidelity": "lm"}


def short_name(task: str) -> str:
    return _SHORT.get(task, task[:8])


def _fmt(v, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _budget_label(b) -> str:
    return "-" if b is None else str(b)


def format_tables(records: list[EvalRecord]) -> str:
    """Markdown tables: one per length (score per task), then a summary over everything."""
    tasks = list(dict.fromkeys(t for r in records for t in r.per_task))
    lengths = list(dict.fromkeys(k for r in records for k in r.per_length))
    out = []
    for length in lengths:
        cols = [t for t in tasks if any(f"{t}@{length}" in r.per_cell or (length == "file" and t in r.per_cell)
                                        for r in records)]
        head = ["policy", "budget"] + [short_name(t) for t in cols] + ["mean", "norm", "kept", "KV MiB", "s"]
        out.append(f"length {length}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in records:
            cell = lambda t: r.per_cell.get(f"{t}@{length}", r.per_cell.get(t) if length == "file" else None)
            full = lambda t: r.per_cell_full.get(f"{t}@{length}", r.per_cell_full.get(t) if length == "file" else None)
            pl = r.per_length.get(length, {})
            scores = [cell(t) for t in cols]
            fulls = [full(t) for t in cols]
            ratios = [s / f for s, f in zip(scores, fulls) if s is not None and f]
            row = [r.policy, _budget_label(r.budget)] + [_fmt(s) for s in scores] + [
                _fmt(pl.get("score")), _fmt(_mean(ratios)), _fmt(pl.get("kept_fraction")),
                _mib(pl.get("kv_bytes_peak")), _fmt(pl.get("seconds"), 0)]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    head = ["policy", "budget", "score", "full", "norm", "kept", "KV MiB peak", "KL", "s", "n"]
    out.append("all lengths\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in records:
        out.append("| " + " | ".join([r.policy, _budget_label(r.budget), _fmt(r.score), _fmt(r.full_score),
                                      _fmt(r.normalised), _fmt(r.kept_fraction), _mib(r.kv_bytes_peak),
                                      _fmt(r.kl, 3), _fmt(r.seconds, 0), str(r.n_samples)]) + " |")
    legend = ", ".join(f"{short_name(t)}={t}" for t in tasks if short_name(t) != t)
    out.append("")
    out.append("norm = score / full-cache score on the same prompts (mean over tasks); kept = mean "
               "kept fraction of the KV cache at answer time; KV MiB = peak KV-cache bytes."
               + (f" Tasks: {legend}." if legend else ""))
    return "\n".join(out)


def write_csv(records: list[EvalRecord], path: str | Path) -> None:
    cells = list(dict.fromkeys(c for r in records for c in r.per_cell))
    fields = ["policy", "budget", "query_aware", "n_samples", "score", "full_score", "normalised",
              "kept_fraction", "kv_bytes_peak", "kv_bytes_peak_mean", "kv_bytes_full_peak", "seconds", "kl"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields + cells)
        for r in records:
            d = r.to_dict(with_samples=False)
            w.writerow([d[f] for f in fields] + [r.per_cell.get(c) for c in cells])


def plot_records(records: list[EvalRecord], path: str | Path, title: str = "") -> None:
    """Score against mean kept fraction, one line per policy; the full cache as a reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for policy, recs in _group_records(records).items():
        pts = sorted((r.kept_fraction if r.kept_fraction is not None else 1.0, r.score) for r in recs)
        if policy == "full":
            ax.axhline(pts[0][1], color="black", linestyle="--", linewidth=1, label="full cache")
            ax.plot([pts[0][0]], [pts[0][1]], "k*", markersize=10)
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    ax.set_xlabel("mean kept fraction of the KV cache")
    ax.set_ylabel("mean score")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _group_records(records: list[EvalRecord]) -> dict[str, list[EvalRecord]]:
    groups: dict[str, list[EvalRecord]] = {}
    for r in records:
        groups.setdefault(r.policy, []).append(r)
    return groups
