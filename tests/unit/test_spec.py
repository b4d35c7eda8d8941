"""namm.spec, the torch-free contract: one list of policy names, budgets with an explicit unit,
the generation request and its default prompt; namm.errors tells input errors apart."""

import subprocess
import sys

import pytest

from namm.errors import BudgetError, ContextTooLongError, InputError, ModelLoadError, UnknownPolicyError
from namm.spec import (
    DEFAULT_BASELINE_BUDGET,
    POLICY_NAMES,
    SUMMARIZE_INSTRUCTION,
    Budget,
    GenerationRequest,
    checkpoint_budget,
    policy_name,
    shipped_namm_budget,
)


def test_policy_names_are_the_library_policies():
    from namm.policies import POLICIES, available_policies

    assert tuple(available_policies()) == POLICY_NAMES == tuple(POLICIES)
    assert policy_name("Streaming-LLM") == "streaming_llm"
    with pytest.raises(UnknownPolicyError, match="valid policies: full, surprisal, namm"):
        policy_name("lru")


@pytest.mark.parametrize("value, expected", [
    ({"fraction": 0.3}, Budget("fraction", 0.3)),
    ({"fraction": 1}, Budget("fraction", 1.0)),
    ({"tokens": 2048}, Budget("tokens", 2048)),
    ({"tokens": 1}, Budget("tokens", 1)),  # one token, not "keep everything"
    ({"tokens": 2048.0}, Budget("tokens", 2048)),  # JSON clients may send whole floats
    (0.3, Budget("fraction", 0.3)),
    (1, Budget("fraction", 1.0)),  # a plain number is a fraction, 1 and 1.0 alike
    ("0.5", Budget("fraction", 0.5)),  # form fields and settings come as text
    ('{"tokens": 64}', Budget("tokens", 64)),
    (None, None),
])
def test_budget_forms(value, expected):
    assert Budget.parse(value) == expected


@pytest.mark.parametrize("value, words", [
    (2048, "ambiguous"), (1.5, "ambiguous"), (0, "> 0"), (-0.5, "> 0"), (True, "number"),
    ({"fraction": 1.5}, "(0, 1]"), ({"fraction": 0}, "(0, 1]"), ({"tokens": 0}, ">= 1"),
    ({"tokens": 2.5}, "whole"), ({"tokens": True}, "number"), ({"tokens": "8"}, "number"),
    ({"tokens": 8, "fraction": 0.5}, "exactly one key"), ({"percent": 5}, "exactly one key"),
    ("lots", "not a number"), ("{bad", "JSON"), ([0.5], "number"), (float("nan"), "finite"),
])
def test_ambiguous_or_bad_budgets_are_refused(value, words):
    with pytest.raises(BudgetError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Budget.parse(value)


def test_budget_round_trip_capacity_and_library_form():
    for budget in (Budget.fraction(0.25), Budget.tokens(512)):
        assert Budget.parse(budget.to_json()) == budget
    assert Budget.fraction(0.25).capacity(100) == 25 and Budget.fraction(0.25).capacity(3) == 1
    assert Budget.tokens(40).capacity(100) == 40
    # in-process Python values keep their long-standing meaning: int tokens, float fraction
    assert Budget.coerce(40) == Budget.tokens(40) and Budget.coerce(0.5) == Budget.fraction(0.5)
    assert Budget.coerce(512.0) == Budget.tokens(512)
    assert Budget.tokens(8).number == 8 and isinstance(Budget.tokens(8).number, int)
    assert DEFAULT_BASELINE_BUDGET == Budget.fraction(0.25)


def test_command_line_budgets():
    assert Budget.parse_text("0.3") == Budget.fraction(0.3)
    assert Budget.parse_text("512") == Budget.tokens(512)
    assert Budget.parse_text("tokens=1") == Budget.tokens(1)
    assert Budget.parse_text("fraction=1") == Budget.fraction(1.0)
    for bad in ("1.5", "0", "x", "percent=3", "tokens=x"):
        with pytest.raises(BudgetError):
            Budget.parse_text(bad)


def test_shipped_checkpoint_budget_is_read_without_torch():
    code = ("import sys; from namm.spec import shipped_namm_budget as b; print(b()); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from namm.checkpoints import default_checkpoint
    from namm.policies import make_policy

    path = default_checkpoint(None)
    expected = make_policy("surprisal").budget  # what the library itself loads from the checkpoint
    assert checkpoint_budget(path) == Budget.coerce(expected) == shipped_namm_budget()
    assert out.stdout.strip() == str(Budget.coerce(expected))


def test_shipped_scorer_is_read_without_torch_and_is_zero(tmp_path):
    import torch

    from namm.checkpoints import default_checkpoint
    from namm.spec import DEFAULT_POLICY, checkpoint_has_trained_scorer, default_budget, shipped_scorer_trained

    code = ("import sys; from namm.spec import shipped_scorer_trained as t; print(t()); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False" and shipped_scorer_trained() is False  # the shipped scorer is zero
    assert DEFAULT_POLICY == "surprisal"
    assert default_budget("surprisal") == default_budget("namm") == shipped_namm_budget()
    ckpt = torch.load(default_checkpoint(None), weights_only=False)
    ckpt["params"][-1] = -0.0  # still zero
    torch.save(ckpt, tmp_path / "zero.pt")
    ckpt["params"][7] = 0.01
    torch.save(ckpt, tmp_path / "evolved.pt")
    assert not checkpoint_has_trained_scorer(tmp_path / "zero.pt")
    assert checkpoint_has_trained_scorer(tmp_path / "evolved.pt")


def test_checkpoint_reader_runs_no_code(tmp_path):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"budget": 0.5, "x": Evil()}))
    out = subprocess.run([sys.executable, "-c", f"from namm.spec import checkpoint_budget as c; "
                          f"print(c({str(path)!r}))"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.5"  # print was stubbed, never called


def test_generation_request_validates_once_and_owns_the_default_prompt():
    req = GenerationRequest(context="doc", budget={"tokens": 64}, policy="H2O")
    assert req.policy == "h2o" and req.budget == Budget.tokens(64)
    assert req.prompts() == ([SUMMARIZE_INSTRUCTION], None)
    assert GenerationRequest(context="d", instruction="List names.").prompts() == (["List names."], None)
    assert GenerationRequest(context="d", questions="q?").prompts() == (["q?"], None)
    for bad in ({"context": "  "}, {"context": "d", "questions": ["ok", " "]},
                {"context": "d", "policy": "nope"}, {"context": "d", "budget": 0},
                {"context": "d", "max_new_tokens": 0}, {"context": "d", "n_up": 100},
                {"context": "d", "n_up": 0}):
        with pytest.raises(InputError):
            GenerationRequest(**bad)


def test_input_errors_are_not_value_errors_and_model_errors_are_not_input():
    assert not issubclass(InputError, ValueError)
    assert not issubclass(ModelLoadError, (InputError, ValueError))
    for cls in (UnknownPolicyError, BudgetError, ContextTooLongError):
        assert issubclass(cls, InputError)


def test_cli_subcommands_fail_loudly_when_they_cannot_import(monkeypatch):
    import namm.cli

    monkeypatch.setitem(sys.modules, "namm.bench", None)  # `import namm.bench` now fails
    with pytest.raises(ImportError):
        namm.cli.build_parser()
