"""Long-context evaluation of memory policies: scores, normalised scores and memory use.

Library use (the CMA-ES trainer calls this for fitness)::

    from namm.evaluation import evaluate
    rec = evaluate(lm, samples, policy, budget)     # policy: name or Policy object
    rec.normalised      # mean over tasks of (score with the policy / full-cache score)

Command line (``namm eval`` or ``python -m namm.evaluation``)::

    python -m namm.evaluation --policies full,h2o,namm --budgets 0.25,0.5 --lengths 1k,2k \\
        --n-per-task 3 --split test --json-out runs/eval.json

Protocol: every prompt is ``namm.generate(lm, context=doc, questions=[q], policy, budget)``:
the document is read and compressed before the question arrives (query-agnostic; use
``--query-aware`` to show the question first), with the one prompt template that
``namm.generate`` owns and greedy decoding. The full cache is always run on the same prompts
as the reference; its answers are cached per sample so they are computed once per process
(and once per file with ``reference_cache=``/``--reference-cache``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from namm.tasks import (SPLITS, Sample, available_tasks, length_label, load_tasks_file, make_samples,
                        parse_lengths, score_answer, write_jsonl)

DEFAULT_MAX_NEW_TOKENS = 32  # for samples that do not say (tasks files)
LM_CONTINUATION_TOKENS = 64


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- reference cache


@dataclass
class _Reference:
    prediction: str
    score: float
    kept_fraction: float | None
    kv_bytes_peak: int | None
    kv_bytes_full_peak: int | None
    tokens_in: int | None
    seconds: float
    log_probs: object = None  # lm_fidelity: full-cache log-probs [T, V] (float16, memory only)


class ReferenceCache:
    """Full-cache results per (model, prompt, decoding settings), so that evaluating many
    policies (or many CMA-ES candidates) runs the full cache once per sample.

    With a ``path`` the text results are also kept in a JSON file across processes; the
    language-model log-probabilities (megabytes per sample) stay in memory only.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._items: dict[str, _Reference] = {}
        if self.path and self.path.exists():
            for key, value in json.loads(self.path.read_text()).items():
                self._items[key] = _Reference(**value)

    def get(self, key: str) -> _Reference | None:
        return self._items.get(key)

    def put(self, key: str, ref: _Reference) -> None:
        self._items[key] = ref
        if self.path and ref.log_probs is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {k: {**asdict(v), "log_probs": None} for k, v in self._items.items() if v.log_probs is None}
            self.path.write_text(json.dumps(data))

    def __len__(self) -> int:
        return len(self._items)


_DEFAULT_REFERENCES = ReferenceCache()


def reference_key(model_name: str, sample: Sample, max_new_tokens: int, query_aware: bool, n_up: int) -> str:
    blob = json.dumps([model_name, sample.context, sample.question, sample.answer, sample.metric,
                       max_new_tokens, query_aware, n_up])
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- running


def _policy_label(policy) -> str:
    return policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)


def _is_full(policy) -> bool:
    return _policy_label(policy).strip().lower() == "full"


def _generate(lm, sample: Sample, policy, budget, max_new_tokens: int, query_aware: bool, n_up: int,
              truncate: bool) -> _Reference:
    import namm

    started = time.perf_counter()
    res = namm.generate(lm, context=sample.context, questions=[sample.question], policy=policy,
                        budget=budget, max_new_tokens=max_new_tokens, n_up=n_up,
                        query_aware=query_aware, truncate=truncate)
    st = res.stats
    score = score_answer(res.text, sample.answers, sample.metric)
    return _Reference(res.text, score, st.kv_kept_fraction, st.kv_bytes_peak, st.kv_bytes_full_peak,
                      st.tokens_in, time.perf_counter() - started)


def _lm_ids(lm, sample: Sample):
    import torch

    tok = lm.tokenizer
    ctx = tok.encode(sample.context, add_special_tokens=False)
    cont = tok.encode(sample.answer, add_special_tokens=False)[:LM_CONTINUATION_TOKENS]
    return torch.tensor(ctx), torch.tensor(cont)


def _log_probs(lm, sample: Sample, policy, budget, n_up: int, stats=None):
    import namm

    ctx, cont = _lm_ids(lm, sample)
    started = time.perf_counter()
    logits = namm.continuation_logits(lm, ctx, cont, policy=policy, budget=budget, n_up=n_up, stats=stats)
    return logits.log_softmax(-1), len(ctx), time.perf_counter() - started


def _lm_reference(lm, sample: Sample, n_up: int) -> _Reference:
    log_probs, n_ctx, secs = _log_probs(lm, sample, "full", None, n_up)
    # the full cache agrees with itself: score 1 by definition
    return _Reference("", 1.0, 1.0, None, None, n_ctx, secs, log_probs.half())


def _lm_result(lm, sample: Sample, policy, budget, n_up: int, ref: _Reference) -> SampleResult:
    from namm.generate import GenerationStats

    st = GenerationStats()
    log_probs, n_ctx, secs = _log_probs(lm, sample, policy, budget, n_up, stats=st)
    full = ref.log_probs.float()
    kl = float((full.exp() * (full - log_probs)).sum(-1).mean())
    agree = float((full.argmax(-1) == log_probs.argmax(-1)).float().mean())
    return SampleResult(sample.task, sample.meta.get("length"), sample.meta.get("index"), "", agree, "",
                        ref.score, st.kv_kept_fraction, st.kv_bytes_peak, st.kv_bytes_full_peak, n_ctx, secs,
                        max(kl, 0.0))


def evaluate(lm, samples: Sequence[Sample], policy="namm", budget=None, *, query_aware: bool = False,
             n_up: int = 512, max_new_tokens: int | None = None, truncate: bool = False,
             reference_cache: ReferenceCache | None = None,
             progress: Callable[[int], None] | None = None) -> EvalRecord:
    """Run ``policy`` (a name or a Policy object, e.g. a NammPolicy with evolved parameters) at
    ``budget`` on ``samples`` and score it against the full cache on the same prompts.

    ``max_new_tokens`` overrides each sample's own (``meta["max_new_tokens"]``). ``progress`` is
    called with 1 after every sample. Full-cache results come from ``reference_cache`` (the
    process-wide one by default) and are computed only when missing.
    """
    refs = reference_cache if reference_cache is not None else _DEFAULT_REFERENCES
    model_name = getattr(lm, "name", "model")
    full = _is_full(policy)
    results: list[SampleResult] = []
    for sample in samples:
        mnt = max_new_tokens or sample.meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
        key = reference_key(model_name, sample, mnt, query_aware, n_up)
        ref = refs.get(key)
        if ref is None or (sample.metric == "lm" and ref.log_probs is None):
            ref = (_lm_reference(lm, sample, n_up) if sample.metric == "lm"
                   else _generate(lm, sample, "full", None, mnt, query_aware, n_up, truncate))
            refs.put(key, ref)
        length, index = sample.meta.get("length"), sample.meta.get("index")
        if sample.metric == "lm":
            result = (SampleResult(sample.task, length, index, "", 1.0, "", 1.0, 1.0, None, None,
                                   ref.tokens_in, ref.seconds, 0.0) if full
                      else _lm_result(lm, sample, policy, budget, n_up, ref))
        else:
            out = ref if full else _generate(lm, sample, policy, budget, mnt, query_aware, n_up, truncate)
            result = SampleResult(sample.task, length, index, out.prediction, out.score, ref.prediction,
                                  ref.score, out.kept_fraction, out.kv_bytes_peak, out.kv_bytes_full_peak,
                                  out.tokens_in, out.seconds)
        results.append(result)
        if progress is not None:
            progress(1)
    label = _policy_label(policy)
    if not isinstance(policy, str):  # a Policy object carries its own budget
        budget = getattr(policy, "budget", budget)
    return aggregate(label, None if full else budget, query_aware, results)


# --------------------------------------------------------------------------- reporting

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


# --------------------------------------------------------------------------- command line


def parse_budgets(spec: str) -> list[float | int]:
    """'0.25,0.5,512' -> [0.25, 0.5, 512]: up to 1 a kept fraction, above 1 a token cap (as in
    ``namm generate --budget``)."""
    out: list[float | int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"bad budget {part!r}: use a fraction in (0, 1] or a token count") from None
        if value <= 0 or (value > 1 and not value.is_integer()):
            raise ValueError(f"bad budget {part!r}: use a fraction in (0, 1] or a whole token count")
        out.append(int(value) if value > 1 else value)
    if not out:
        raise ValueError("no budgets given")
    return out


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policies", default="full,recency,streaming_llm,h2o,tova,snapkv,l2norm,random,namm",
                   help="comma-separated policies (see namm.available_policies()); the full cache is "
                        "always run as the reference")
    p.add_argument("--budgets", default="0.25,0.5",
                   help="comma-separated budgets: a float in (0,1] is a kept fraction, an int a token cap")
    p.add_argument("--lengths", default="1k,2k", help="context lengths in tokens, e.g. 1k,2k,4k or 1500")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tasks", default=None,
                     help=f"comma-separated generated tasks (default: all): {', '.join(available_tasks())}")
    src.add_argument("--tasks-file", default=None,
                     help="JSONL file, one {context, question, answer[, task, metric]} per line")
    p.add_argument("--metric", default="contains", choices=["contains", "contains_all", "f1"],
                   help="scoring of --tasks-file lines that do not name a metric")
    p.add_argument("--n-per-task", type=int, default=3, help="samples per task and length")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--query-aware", action="store_true", help="show the question before the document too")
    p.add_argument("--n-up", type=int, default=512, help="memory update interval in tokens")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override every task's answer length")
    p.add_argument("--truncate", action="store_true", help="let the full cache truncate over-long prompts")
    p.add_argument("--model", default=None, help="local model path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--json-out", default=None, help="write the records here (CSV and PNG beside it)")
    p.add_argument("--csv-out", default=None)
    p.add_argument("--plot-out", default=None)
    p.add_argument("--reference-cache", default=None, help="JSON file keeping full-cache answers across runs")
    p.add_argument("--export-jsonl", default=None,
                   help="only write the selected samples (question-answer tasks) to this JSONL file and exit")
    p.add_argument("--no-progress", action="store_true")


def add_eval_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on a CLI's subparsers (``namm eval ...``)."""
    p = subparsers.add_parser("eval", help="evaluate memory policies on long-context tasks",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)
    return p


def select_samples(args) -> list[Sample]:
    if args.tasks_file:
        return load_tasks_file(args.tasks_file, default_metric=args.metric)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else available_tasks()
    return make_samples(tasks, parse_lengths(args.lengths), args.n_per_task, args.split)


def run_eval(args) -> int:
    """``namm eval``: returns the exit status; bad input is one clear line on stderr, status 2."""
    try:
        return _run(args)
    except ValueError as exc:  # a bad tasks-file line, length, budget or task name
        print(f"namm eval: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from tqdm import tqdm

    samples = select_samples(args)
    budgets = parse_budgets(args.budgets)
    if args.export_jsonl:
        qa = [s for s in samples if s.metric != "lm"]
        write_jsonl(qa, args.export_jsonl)
        print(f"wrote {len(qa)} samples to {args.export_jsonl}", file=sys.stderr)
        return 0
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    runs = [("full", None)] + [(p, b) for p in policies if p != "full" for b in budgets]

    import namm

    unknown = [p for p, _ in runs if p.lower().replace("-", "_") not in namm.available_policies()]
    if unknown:
        raise ValueError(f"unknown policies: {', '.join(unknown)}; available: {', '.join(namm.available_policies())}")
    lm = namm.load_model(args.model) if args.model else namm.load_model()
    refs = ReferenceCache(args.reference_cache)
    records: list[EvalRecord] = []
    config = {"model": lm.name, "split": None if args.tasks_file else args.split,
              "tasks_file": args.tasks_file, "lengths": None if args.tasks_file else args.lengths,
              "n_per_task": args.n_per_task, "query_aware": args.query_aware, "n_up": args.n_up,
              "policies": policies, "budgets": budgets, "command": " ".join(sys.argv)}

    def save(records):
        """Write what is done so far (after every policy, so a long run that is stopped keeps it)."""
        csv_out, plot_out = args.csv_out, args.plot_out
        if args.json_out:
            out = Path(args.json_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"config": config, "records": [r.to_dict() for r in records]}, indent=1))
            csv_out, plot_out = csv_out or out.with_suffix(".csv"), plot_out or out.with_suffix(".png")
        if csv_out:
            write_csv(records, csv_out)
        if plot_out:
            plot_records(records, plot_out, title=f"{lm.name}, {config['lengths'] or args.tasks_file}, "
                                                  f"{'query-aware' if args.query_aware else 'query-agnostic'}")
        return args.json_out, csv_out, plot_out

    with tqdm(total=len(runs) * len(samples), desc="eval", unit="prompt", file=sys.stderr,
              disable=args.no_progress, dynamic_ncols=True) as bar:
        for policy, budget in runs:
            bar.set_postfix_str(f"{policy} {budget if budget is not None else ''}".strip())
            records.append(evaluate(lm, samples, policy, budget, query_aware=args.query_aware, n_up=args.n_up,
                                    max_new_tokens=args.max_new_tokens, truncate=args.truncate,
                                    reference_cache=refs, progress=bar.update))
            save(records)
    print(format_tables(records))
    written = [str(p) for p in save(records) if p]
    if written:
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m namm.evaluation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(p)
    return run_eval(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
