"""bench/batched_generation.py's CPU smoke run (--tiny: the --llama3-8b code path on a random
2-layer Llama 3): every run prints a row, batched answers equal one-at-a-time ones."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "batched_generation.py"


def test_tiny_bench_prints_every_run_and_batched_answers_match(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("batched_generation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rows.json"
    assert module.main(["--tiny", "--docs", "3", "--min-tokens", "200", "--max-tokens", "500", "--max-new-tokens", "5",
                        "--n-up", "64", "--max-batch", "4", "--decode-rows", "2", "--decode-steps", "2",
                        "--runs", "one_full,one_surprisal,batched_full,batched_surprisal,hf_dynamic",
                        "--json-out", str(out)]) == 0
    table = capsys.readouterr().out
    for run in ("one-at-a-time full", "one-at-a-time streaming_llm", "batched full", "batched streaming_llm",
                "transformers dynamic"):
        assert f"| {run} |" in table
    data = json.loads(out.read_text())
    runs = {r["run"]: r for r in data["runs"]}
    assert runs["batched full"]["answers"] == runs["one-at-a-time full"]["answers"]
    assert runs["batched streaming_llm"]["answers"] == runs["one-at-a-time streaming_llm"]["answers"]
    assert runs["transformers dynamic"]["tokens_out"] == runs["one-at-a-time full"]["tokens_out"] > 0
    assert [d["policy"] for d in data["decode"]] == ["streaming_llm", "full"]
    assert all(d["rows"] == 2 and d["batched_tokens_per_s"] > 0 for d in data["decode"])
