"""The paired comparison's report: only prompts the full cache answers right are compared, and a
prompt it gets wrong counts as finished with its full row alone (the policies skip it)."""

from namm.evaluation.compare import report


def _row(policy, budget, sample, task, score, kept=None, seconds=1.0):
    return {"policy": policy, "budget": budget, "sample": sample, "task": task, "score": score,
            "kept_fraction": kept, "seconds": seconds}


def _results(rows):
    return {(r["policy"], r["budget"], r["sample"]): r for r in rows}


def test_report_compares_on_prompts_the_full_cache_solves():
    rows = [
        _row("full", None, "a1", "a", 1.0), _row("surprisal", 0.3, "a1", "a", 1.0, 0.3), _row("recency", 0.3, "a1", "a", 0.0, 0.3),
        _row("full", None, "a2", "a", 1.0), _row("surprisal", 0.3, "a2", "a", 0.0, 0.3), _row("recency", 0.3, "a2", "a", 0.0, 0.3),
        _row("full", None, "b1", "b", 1.0), _row("surprisal", 0.3, "b1", "b", 1.0, 0.3), _row("recency", 0.3, "b1", "b", 1.0, 0.3),
        _row("full", None, "b2", "b", 0.0),  # wrong with the full cache: skipped by the policies
    ]
    text = report(_results(rows))
    assert text.splitlines()[0].startswith("3 of 4 prompts answered right by the full cache (4 started)")
    surprisal_line = next(line for line in text.splitlines() if line.startswith("surprisal"))
    recency_line = next(line for line in text.splitlines() if line.startswith("recency"))
    # mean over tasks of the task means: namm (0.5 + 1) / 2, recency (0 + 1) / 2
    assert surprisal_line.split()[2:4] == ["3", "0.750"]
    assert recency_line.split()[2:4] == ["3", "0.500"]
    assert "+0.250" in recency_line


def test_a_prompt_still_running_is_left_out_of_every_policy():
    rows = [
        _row("full", None, "a1", "a", 1.0), _row("surprisal", 0.3, "a1", "a", 1.0, 0.3), _row("recency", 0.3, "a1", "a", 1.0, 0.3),
        _row("full", None, "a2", "a", 1.0), _row("surprisal", 0.3, "a2", "a", 0.0, 0.3),  # recency not yet run
    ]
    text = report(_results(rows))
    assert text.splitlines()[0].startswith("1 of 1 prompts answered right")
    assert next(line for line in text.splitlines() if line.startswith("surprisal")).split()[3] == "1.000"


def test_a_results_file_holds_one_mode(tmp_path):
    """Query-aware or bfloat16 rows beside query-agnostic float32 ones would pair answers read
    differently as if they were the same prompt's: the command refuses to mix them."""
    import json

    import pytest

    from namm.evaluation.compare import main

    out = tmp_path / "qa.jsonl"
    out.write_text(json.dumps({**_row("full", None, "a1", "a", 1.0), "query_aware": True}) + "\n")
    with pytest.raises(SystemExit, match="another mode"):
        main(["--tasks", "passkey", "--out", str(out), "--report-only"])
    with pytest.raises(SystemExit, match="another mode"):
        main(["--tasks", "passkey", "--out", str(out), "--report-only", "--query-aware", "--dtype", "bfloat16"])
    assert main(["--tasks", "passkey", "--out", str(out), "--report-only", "--query-aware"]) == 0


def test_full_cache_references_of_another_dtype_are_kept_apart():
    import torch

    from namm.evaluation.references import reference_model_name
    from tiny_llama import tiny_llama3

    lm = tiny_llama3(layers=1)
    assert reference_model_name(lm) == lm.name
    lm.model.to(torch.bfloat16)
    assert reference_model_name(lm) == f"{lm.name}@bfloat16"


def test_modes_compare_each_policy_on_the_prompts_both_files_ran():
    from namm.evaluation.modes import mode_report, renamed

    agnostic = renamed(_results([
        _row("full", None, "a1", "a", 1.0), _row("namm", 0.3, "a1", "a", 0.0),
        _row("full", None, "a2", "a", 1.0), _row("namm", 0.3, "a2", "a", 1.0),
        _row("full", None, "b1", "b", 0.0),  # wrong here: no memory row
    ]), {"namm": "surprisal"})
    aware = _results([
        _row("full", None, "a1", "a", 1.0), _row("surprisal", 0.3, "a1", "a", 1.0),
        _row("full", None, "a2", "a", 0.0),  # wrong in this mode: no memory row
        _row("full", None, "b1", "b", 1.0), _row("surprisal", 0.3, "b1", "b", 1.0),
    ])
    lines = mode_report(agnostic, aware, ("agnostic", "aware")).splitlines()
    full = next(line for line in lines if line.startswith("full")).split()
    memory = next(line for line in lines if line.startswith("surprisal")).split()
    assert full[2:6] == ["3", "0.500", "0.750", "+0.250"]  # tasks a (1, 1 -> 1, 0) and b (0 -> 1)
    assert memory[2:6] == ["1", "0.000", "1.000", "+1.000"]  # only a1 was run in both
