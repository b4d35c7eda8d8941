"""The evolution pipeline as one command (`python -m namm.evolution`), its shared CMA-ES
generation loop (namm/evolution/cma_loop.py) and the tools module's `select` harness."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from namm.evolution.cma_loop import Scored, run_generations
from namm.evolution.optimizer import load_optimizer

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["pool", "warmstart", "refine", "surprisal", "scorer", "evolve", "select", "variant", "profile"]


# ---- the shared loop ------------------------------------------------------------------------------
def _search(out: Path, generations: int, seed: int = 3):
    """A cheap search through the real loop: a quadratic around a target that moves with the
    generation's mini-batch (drawn from (seed, generation), as surprisal/scorer do)."""
    from cmaes import CMA

    pool = list(range(20))
    calls = []

    def score(xs, mean, generation):
        batch = random.Random(f"{seed}/{generation}").sample(pool, 5)
        target = np.full(4, np.mean(batch) / 20)
        fit = [float(-((x - target) ** 2).sum()) for x in xs + [mean]]
        calls.append(generation)
        return Scored(fit[:-1], {"mean_before": fit[-1]},
                      {"prompts": len(batch), "new_mean": lambda opt: json.dumps([round(float(v), 4) for v in opt.mean])})

    saved = []
    opt = run_generations(out, generations, lambda: CMA(mean=np.zeros(4), sigma=0.3, seed=seed, population_size=6),
                          score, state={"note": "synthetic"}, after_save=lambda o, g: saved.append(g),
                          log=lambda _: None)
    return opt, calls, saved


def _rows(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_the_loop_resumed_halfway_is_the_loop_run_at_once(tmp_path):
    whole, calls, saved = _search(tmp_path / "a", 6)
    assert calls == list(range(6)) and saved == list(range(1, 7))
    _, first, _ = _search(tmp_path / "b", 3)
    again, second, saved_b = _search(tmp_path / "b", 6)  # a new process would do the same: all from the files
    assert first == [0, 1, 2] and second == [3, 4, 5] and saved_b == [4, 5, 6]
    np.testing.assert_array_equal(whole.mean, again.mean)
    a, b = (torch.load(tmp_path / d / "state.pt", weights_only=False) for d in ("a", "b"))
    assert list(a) == ["optimizer", "generation", "note"] and a["generation"] == b["generation"] == 6
    np.testing.assert_array_equal(load_optimizer(a["optimizer"]).mean, load_optimizer(b["optimizer"]).mean)
    rows = _rows(tmp_path / "a" / "log.csv")
    assert rows == _rows(tmp_path / "b" / "log.csv") and len(rows) == 6
    header = (tmp_path / "a" / "log.csv").read_text().splitlines()[0]
    assert header == "generation,best,population_mean,mean_before,sigma,seconds,prompts,new_mean"
    assert all(len(r["best"].split(".")[-1]) <= 4 for r in rows)  # rounded to 4 digits
    assert json.loads(rows[-1]["new_mean"]) == [round(float(v), 4) for v in whole.mean]  # after the update
    # a finished run does nothing more
    _, none, _ = _search(tmp_path / "a", 6)
    assert none == [] and len(_rows(tmp_path / "a" / "log.csv")) == 6


def test_refine_replays_its_batches_after_a_resume_and_writes_its_mean(tmp_path):
    from namm.evolution import refine
    from namm.policies.namm import NammPolicy

    class QuadraticSurrogate:
        """Stands in for `Surrogate` (which needs a model): a fitness of the vector and the batch."""
        recs, budget = list(range(9)), 0.3

        def __init__(self):
            self.batches = []

        def fitness(self, x, prompts):
            self.batches.append(tuple(prompts))
            return float(-((np.asarray(x[:8]) - 0.1) ** 2).sum() + 0.01 * sum(prompts))

    init = NammPolicy(budget=0.3, threshold=False)
    whole, part, rest = QuadraticSurrogate(), QuadraticSurrogate(), QuadraticSurrogate()
    refine.evolve(whole, init, tmp_path / "a", 4, 4, 3, 0.05, 7)
    refine.evolve(part, init, tmp_path / "b", 2, 4, 3, 0.05, 7)
    refine.evolve(rest, init, tmp_path / "b", 4, 4, 3, 0.05, 7)
    assert sorted(set(whole.batches)) == sorted(set(part.batches + rest.batches))
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()
    assert (tmp_path / "a" / "log.csv").read_text().splitlines()[0] == \
        "generation,best,population_mean,mean,sigma,seconds"
    a, b = (NammPolicy.from_checkpoint(tmp_path / d / "mean.pt") for d in ("a", "b"))
    assert torch.equal(a.params, b.params) and a.params.any()


# ---- one command --------------------------------------------------------------------------------
def _run(*args):
    return subprocess.run([sys.executable, "-m", "namm.evolution", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_the_command_lists_every_stage_in_pipeline_order():
    res = _run("--help")
    assert res.returncode == 0
    listed = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ")]
    assert listed == COMMANDS
    assert "record a pool -> surrogate fitness -> CMA-ES -> closed-loop validation -> export" in res.stdout
    bad = _run("bogus")
    assert bad.returncode == 2 and "unknown command 'bogus'" in bad.stderr


@pytest.mark.parametrize("command, option", [
    ("pool", "--rows"), ("warmstart", "--pool"), ("refine", "--init"), ("surprisal", "retention"),
    ("scorer", "correlation"), ("evolve", "--config"), ("select", "--variants"), ("variant", "--set"),
    ("profile", "--from-budget"),
])
def test_every_stage_answers_help_under_its_command(command, option):
    res = _run(command, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: python -m namm.evolution {command}") and option in res.stdout


def test_a_stage_gets_the_arguments_after_its_name(tmp_path):
    from namm.checkpoints import default_checkpoint
    from namm.policies.namm import NammPolicy

    out = tmp_path / "v.pt"
    res = _run("variant", "--base", str(default_checkpoint(None)), "--set", "namm:scorer=zero:recent=0.3",
               "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert NammPolicy.from_checkpoint(out).recent == 0.3


# ---- select ---------------------------------------------------------------------------------------
def test_selection_variants_parse_to_the_checkpoint_settings():
    from namm.checkpoints import default_checkpoint
    from namm.evolution.tools import parse_selection_variant, selection_policy

    assert parse_selection_variant("zero:w=1:r=0.25:k=65") == (
        "zero", {"surprise": "1", "recent": "0.25", "surprise_pool": "65"})
    assert parse_selection_variant("file=a:b.pt") == ("file", {"path": "a:b.pt"})
    assert parse_selection_variant("streaming_llm") == ("streaming_llm", {})
    for bad in ("zero:q=1", "zero:w", "streaming_llm:r=0.2"):
        with pytest.raises(ValueError):
            parse_selection_variant(bad)
    base = default_checkpoint(None)
    pol = selection_policy("zero:w=1:r=0.25:k=65:s=2", 0.28, base)
    assert (pol.surprise_mix, pol.recent, pol.sinks, bool(pol.params.any())) == ({"max:65": 1.0}, 0.25, 2, False)
    ship = selection_policy("ship", 0.5, base)
    assert ship.surprise_mix == _from_checkpoint(base, 0.5).surprise_mix
    assert selection_policy("streaming_llm", 0.28, base).name == "streaming_llm"


def _from_checkpoint(path, budget):
    from namm.policies.namm import NammPolicy

    return NammPolicy.from_checkpoint(path, budget=budget)


@pytest.mark.parametrize("argv, message", [
    (["--variants", "full"], "--tasks"),
    (["--tasks", "passkey", "--variants", "zero:q=1"], "options are"),
    (["--tasks", "passkey", "--variants", "nonsense"], "unknown policy"),
    (["--tasks", "passkey", "--variants", "file=/nonexistent.pt"], "nonexistent"),
    (["--tasks", "passkey", "--variants", "ship", "--lengths", "1k,x"], "invalid literal"),
])
def test_bad_select_arguments_are_usage_errors_before_the_model_loads(argv, message, capsys, tmp_path):
    from namm.evolution.tools import main

    with pytest.raises(SystemExit) as exit_:
        main(["select", "--out", str(tmp_path / "rows.jsonl"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_select_writes_rows_and_a_rerun_skips_them(tmp_path):
    from argparse import Namespace

    from namm.evolution.tools import run_selection, selection_plan
    from tests.tiny_llama import tiny_llama3

    assert selection_plan(["a", "b"], [1, 2], 3, 2)[:3] == [("a", 1, 3), ("b", 1, 3), ("a", 2, 3)]
    out = tmp_path / "rows.jsonl"
    args = Namespace(tasks="passkey", lengths="256", n=2, start=0, split="validation", budget=0.5, only="",
                     base="namm/checkpoints/smollm2-135m.pt", out=str(out))
    # sample 0's full-cache row from an earlier run, answered right: only its variant is left to run
    out.write_text(json.dumps({"variant": "full", "sample": "passkey@256/0", "task": "passkey", "score": 1.0}) + "\n")
    lm, logged = tiny_llama3(seed=1), []
    run_selection(lm, args, ["streaming_llm"], log=logged.append)
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert [(r["variant"], r["sample"]) for r in rows] == [
        ("streaming_llm", "passkey@256/0"), ("full", "passkey@256/1")]  # a random model misses sample 1:
    assert rows[1]["score"] < 1  # its variants are skipped, the miss says nothing about memory
    assert list(rows[0]) == ["variant", "sample", "task", "score", "answer", "kept", "secs"]
    assert 0 < rows[0]["kept"] < 1 and [json.loads(x) for x in logged] == rows
    run_selection(lm, args, ["streaming_llm"], log=logged.append)  # resumed: nothing left to run
    assert len(out.read_text().splitlines()) == 3 and len(logged) == 2


def test_one_step_is_one_cma_generation_for_every_search():
    """`step` (the one ask-score-tell of every search, the closed-loop run's included) is a plain
    CMA-ES generation: the same population and update as asking and telling by hand, and on a
    sphere it walks the mean to the optimum."""
    import numpy as np
    from cmaes import CMA

    from namm.evolution.cma_loop import step

    def sphere(xs):
        return [-float(np.sum((x - 1.0) ** 2)) for x in xs]

    by_step, by_hand = CMA(mean=np.zeros(3), sigma=0.5, seed=3), CMA(mean=np.zeros(3), sigma=0.5, seed=3)
    for _ in range(40):
        xs, fits = step(by_step, sphere)
        hand = [by_hand.ask() for _ in range(by_hand.population_size)]
        by_hand.tell([(x, -f) for x, f in zip(hand, sphere(hand))])
        assert all(np.array_equal(a, b) for a, b in zip(xs, hand)) and fits == sphere(hand)
    assert np.array_equal(by_step.mean, by_hand.mean)
    assert np.allclose(by_step.mean, 1.0, atol=0.05)
