"""The Llama 3 architecture benchmark (meant for a GPU) runs end to end on a tiny config."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_llama3_arch.py"


def test_tiny_llama3_bench_prints_a_table_with_every_policy(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_llama3_arch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rows.json"
    assert module.main(["--size", "tiny", "--lengths", "1100", "--policies", "full,surprisal",
                        "--decode-tokens", "2", "--device", "cpu", "--json-out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Llama-3-tiny" in table and " full " in table and " surprisal " in table
    full, namm = json.loads(out.read_text())
    assert full["tokens"] == namm["tokens"] == 1100
    assert namm["kv_bytes_peak"] < full["kv_bytes_peak"]  # the memory evicts on this architecture
    assert namm["kept_fraction"] < 0.5 and full["kept_fraction"] == 1.0
