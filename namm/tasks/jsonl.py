"""Bring your own data: samples from a JSONL file, and the export of generated splits.

Each line is a JSON object with ``context``, ``question`` and ``answer`` (a string, or a list
of acceptable strings), and optionally ``task`` (default ``custom``) and ``metric``
(``contains`` or ``f1``; default from the caller). Blank lines are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from namm.tasks.base import Sample

TEXT_METRICS = ("contains", "contains_all", "f1")


class TasksFileError(ValueError):
    """A line of a tasks file is not a valid sample; the message names the file and line."""


def _fail(path: Path, lineno: int, why: str) -> TasksFileError:
    return TasksFileError(f"{path}:{lineno}: {why}")


def _parse_line(path: Path, lineno: int, line: str, default_metric: str) -> Sample:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _fail(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise _fail(path, lineno, "expected a JSON object with context, question and answer")
    for key in ("context", "question"):
        if not isinstance(obj.get(key), str):
            raise _fail(path, lineno, f"missing or non-string {key!r}")
    if not obj["context"].strip():
        raise _fail(path, lineno, "empty 'context'")
    answer = obj.get("answer")
    if isinstance(answer, list):
        if not answer or not all(isinstance(a, str) and a.strip() for a in answer):
            raise _fail(path, lineno, "'answer' list must hold non-empty strings")
    elif not isinstance(answer, str) or not answer.strip():
        raise _fail(path, lineno, "missing or empty 'answer' (a string or a list of strings)")
    task = obj.get("task", "custom")
    if not isinstance(task, str) or not task:
        raise _fail(path, lineno, "'task' must be a non-empty string")
    metric = obj.get("metric", default_metric)
    if metric not in TEXT_METRICS:
        raise _fail(path, lineno, f"unknown metric {metric!r}; use one of {', '.join(TEXT_METRICS)}")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise _fail(path, lineno, "'meta' must be an object")
    meta = {**meta, "metric": metric, "source": f"{path.name}:{lineno}"}
    return Sample(task, obj["context"], obj["question"], answer, meta)


def load_tasks_file(path: str | Path, default_metric: str = "contains") -> list[Sample]:
    path = Path(path)
    if default_metric not in TEXT_METRICS:
        raise ValueError(f"unknown metric {default_metric!r}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TasksFileError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise TasksFileError(f"{path}: not UTF-8 text") from None
    samples = [_parse_line(path, i, line, default_metric)
               for i, line in enumerate(lines, 1) if line.strip()]
    if not samples:
        raise TasksFileError(f"{path}: no samples (the file is empty)")
    return samples


def write_jsonl(samples: list[Sample], path: str | Path) -> None:
    """One sample per line, in the format load_tasks_file reads (plus task and meta)."""
    if any(s.metric not in TEXT_METRICS for s in samples):
        raise ValueError("only question-answer samples can be exported (not lm_fidelity)")
    with open(path, "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps({"task": s.task, "context": s.context, "question": s.question,
                                 "answer": s.answer, "metric": s.metric, "meta": s.meta}) + "\n")
