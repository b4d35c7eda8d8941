"""CMA-ES training loop (namm.evolve) on a cheap synthetic fitness: no model needed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from namm import evolve
from namm.evolve import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def synth(tmp_path, **kw):
    data = {"fitness": "synthetic", "synthetic_dim": 12, "population": 8, "sigma": 0.1, "seed": 3,
            "stages": [{"tasks": ["a"], "generations": 4}, {"tasks": ["a", "b"], "generations": 3}], "plot_every": 0,
            "out_dir": str(tmp_path / "run")}
    data.update(kw)
    return data


def quiet(_msg):
    pass


def test_cma_improves_synthetic_fitness(tmp_path):
    cfg = config_from_dict(synth(tmp_path, stages=[{"tasks": ["a"], "generations": 25}]))
    state = evolve.run(cfg, log=quiet, progress=False)
    logs = state.logs
    assert len(logs) == 25 and state.done
    assert logs[-1]["mean_solution_fitness"] > logs[0]["mean_solution_fitness"] + 0.5
    assert logs[-1]["best_fitness"] > logs[0]["best_fitness"]


def test_mean_starts_at_zero_and_elite_ratio_sets_parents(tmp_path):
    cfg = config_from_dict(synth(tmp_path, population=10, elite_ratio=0.3))
    opt = evolve.make_optimizer(cfg, 12)
    assert np.all(opt.mean == 0) and opt._mu == 3 and opt.population_size == 10
    w = opt._weights
    assert (w[:3] > 0).all() and (w[3:] <= 0).all() and abs(w[:3].sum() - 1) < 1e-9
    default = evolve.make_optimizer(config_from_dict(synth(tmp_path, population=10)), 12)
    assert default._mu == 5


def _next_candidates(opt, n=4):
    return np.stack([opt.ask() for _ in range(n)])


def test_resume_gives_the_same_next_candidates(tmp_path):
    a = config_from_dict(synth(tmp_path / "a"))
    full = evolve.run(a, log=quiet, progress=False)
    b = config_from_dict(synth(tmp_path / "b"))
    evolve.run(b, log=quiet, progress=False, stop_after=5)  # interrupted in stage 2
    part = evolve.load_state(Path(b.out_dir))
    assert part.generation == 5 and part.stage == 1 and not part.done
    # the candidates the interrupted run would draw next are those the full run drew
    a5 = config_from_dict(synth(tmp_path / "a5"))
    evolve.run(a5, log=quiet, progress=False, stop_after=5)
    x1 = _next_candidates(evolve.load_optimizer(evolve.load_state(Path(a5.out_dir)).optimizer))
    x2 = _next_candidates(evolve.load_optimizer(part.optimizer))
    np.testing.assert_array_equal(x1, x2)
    resumed = evolve.run(b, resume=True, log=quiet, progress=False)
    assert resumed.generation == full.generation == 7
    # later generations agree to rounding (numpy reductions may round differently on arrays
    # that sit at other memory alignments; the state itself round-trips bit for bit)
    for r1, r2 in zip(full.logs, resumed.logs):
        assert r1["best_fitness"] == pytest.approx(r2["best_fitness"], rel=1e-9)
        assert r1["sigma"] == pytest.approx(r2["sigma"], rel=1e-9)
    np.testing.assert_allclose(evolve.load_optimizer(resumed.optimizer).mean,
                               evolve.load_optimizer(full.optimizer).mean, rtol=1e-9, atol=1e-12)


def test_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    cfg = config_from_dict(synth(tmp_path, stages=[{"tasks": ["a"], "generations": 1}]))
    evolve.run(cfg, log=quiet, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        evolve.run(cfg, log=quiet, progress=False)


SLOW_EVOLVE = ("import sys, time; from namm.evolution import fitness; "
               "call = fitness.SyntheticFitness.__call__; "
               "fitness.SyntheticFitness.__call__ = "
               "lambda self, *a, **k: (time.sleep(0.004), call(self, *a, **k))[1]; "
               "from namm.evolve import main; sys.exit(main(sys.argv[1:]))")


def test_resume_is_exact_after_a_stop_at_every_generation(tmp_path):
    """The state is the run: stopped after any generation and resumed, a run ends on the very
    mean an uninterrupted one reaches (bit for bit, not to a tolerance)."""
    stages = [{"tasks": ["a"], "generations": 6}, {"tasks": ["a", "b"], "generations": 6}]
    ref = evolve.run(config_from_dict(synth(tmp_path / "ref", stages=stages)), log=quiet, progress=False)
    for k in range(1, 12):
        cfg = config_from_dict(synth(tmp_path / f"stop{k}", stages=stages))
        evolve.run(cfg, log=quiet, progress=False, stop_after=k)
        resumed = evolve.run(cfg, resume=True, log=quiet, progress=False)
        np.testing.assert_array_equal(evolve.load_optimizer(resumed.optimizer).mean,
                                      evolve.load_optimizer(ref.optimizer).mean, err_msg=f"stopped after {k}")
        assert [r["best_fitness"] for r in resumed.logs] == [r["best_fitness"] for r in ref.logs]


def test_kill_9_at_random_instants_then_resume_is_exact(tmp_path):
    """SIGKILL `namm evolve` again and again at random instants (mid-generation, mid-write), resume
    each time: the logs hold every generation once and the mean is the uninterrupted run's."""
    cfg = synth(tmp_path, stages=[{"tasks": ["a"], "generations": 30}])
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = Path(cfg["out_dir"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = np.random.default_rng(7)

    def generations_logged() -> int:
        try:
            return len(json.loads((out / "log.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet
            return 0

    kills = 0
    while not (out / evolve.CHECKPOINT).exists() or not evolve.load_state(out).done:
        argv = [sys.executable, "-c", SLOW_EVOLVE, "--config", str(path), "--no-progress"]
        if (out / evolve.CHECKPOINT).exists():
            argv.append("--resume")
        seen = generations_logged()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            if kills < 6:
                # wait for progress (a condition, not a time: start-up is slow on a busy
                # machine), then kill at a random instant of the generations that follow
                give_up = time.monotonic() + 60
                while generations_logged() <= seen and proc.poll() is None:
                    assert time.monotonic() < give_up, "no generation logged: the run hangs"
                    time.sleep(0.005)
                time.sleep(float(rng.uniform(0.0, 0.12)))
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    kills += 1
            _, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, -signal.SIGKILL), err
        finally:
            proc.kill()
    assert kills >= 2, "no kill landed mid-run: the check proved nothing"
    state = evolve.load_state(out)
    assert state.done and state.generation == 30
    assert [r["generation"] for r in state.logs] == list(range(1, 31))
    assert [r["generation"] for r in json.loads((out / "log.json").read_text())] == list(range(1, 31))
    ref = evolve.run(config_from_dict({**cfg, "out_dir": str(tmp_path / "ref")}), log=quiet, progress=False)
    np.testing.assert_array_equal(evolve.load_optimizer(state.optimizer).mean,
                                  evolve.load_optimizer(ref.optimizer).mean)


def test_logs_and_plot_are_written(tmp_path):
    cfg = config_from_dict(synth(tmp_path))
    evolve.run(cfg, log=quiet, progress=False)
    out = Path(cfg.out_dir)
    logs = json.loads((out / "log.json").read_text())
    assert len(logs) == 7 and logs[-1]["stage"] == 2
    for key in ("best_fitness", "mean_fitness", "mean_solution_fitness", "mean_solution_kept", "sigma", "seconds"):
        assert key in logs[0]
    lines = (out / "log.csv").read_text().splitlines()
    assert lines[0].startswith("generation,stage") and len(lines) == 8
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize("patch, message", [
    ({"population": 1}, "'population' must be an integer >= 2"),
    ({"elite_ratio": 1.5}, "'elite_ratio' must be in (0, 1)"),
    ({"sigma": 0}, "'sigma' must be > 0"),
    ({"stages": []}, "'stages' must be a non-empty list"),
    ({"stages": [{"tasks": ["a"], "generations": 0}]}, "stage 1: 'generations' must be an integer >= 1"),
    ({"stages": [{"tasks": [], "generations": 2}]}, "stage 1: 'tasks' must be a non-empty list"),
    ({"popsize": 4}, "unknown config keys: popsize"),
    ({"budget": 1.5}, "config 'budget'"),
    ({"n_up": 100}, "'n_up' must be a positive multiple of 16"),
    ({"optimizer": "adam"}, "'optimizer' must be 'cma' or 'sep'"),
    ({"fitness": "tasks", "stages": [{"tasks": ["nope"], "generations": 1}]}, "stage 1: unknown tasks ['nope']"),
])
def test_config_errors_are_clear(tmp_path, patch, message):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(synth(tmp_path, **patch))
    assert message in str(exc.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"stages": [}')
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        load_config(bad)


def test_cli_reports_config_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stages": [{"tasks": ["passkey"], "generations": 1}], "sigma": -1}))
    res = subprocess.run([sys.executable, "-m", "namm.cli", "evolve", "--config", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "namm evolve: error: config 'sigma' must be > 0" in res.stderr


def test_shipped_config_is_valid():
    cfg = load_config(ROOT / "configs" / "evolve-smollm2.json")
    assert cfg.fitness == "tasks" and cfg.budget is not None and cfg.budget <= 0.3


def test_make_policy_loads_the_shipped_checkpoint():
    from namm.checkpoints import default_checkpoint
    from namm.policies import make_policy
    from namm.policies.namm import NammPolicy

    path = default_checkpoint("SmolLM2-135M-Instruct")
    if path is None:
        pytest.skip("no shipped checkpoint yet")
    pol = NammPolicy.from_checkpoint(path, model_name="SmolLM2-135M-Instruct")
    assert isinstance(pol, NammPolicy) and pol.norm.frozen and pol.norm.count > 0
    assert pol.budget is not None and pol.budget <= 0.3
    assert pol.params.shape == (NammPolicy.num_params(),)
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert torch.equal(pol.params, ckpt["params"])
    assert pol.use_threshold == ckpt.get("threshold", True)  # the mode it was trained in
    assert (pol.attention_rows, pol.block, pol.sinks, pol.recent) == (
        ckpt.get("rows"), ckpt.get("block"), ckpt.get("sinks", 0), ckpt.get("recent", 0.0))
    assert (pol.surprise, pol.surprise_pool) == (ckpt.get("surprise", 0.0), ckpt.get("surprise_pool", 33))
    # what ships was chosen closed-loop on validation prompts: the best of the variants tried,
    # and never worse than the baselines it was compared with there
    val = ckpt["training"]["validation"]
    assert val["prompts"] >= 60 and val["namm"] >= max(val["baselines"].values())
    assert val["namm"] == max(val["grid"].values())
    # a budget profile ships only where it won on validation, and the base where it did
    for profile in ckpt.get("profiles", []):
        won = ckpt["training"]["profiles"]["validation"]
        assert profile["from_budget"] <= 0.5 and won["budget_0.5"]["cma"] > won["budget_0.5"]["base"]
        assert ckpt["budget"] < profile["from_budget"] and won["budget_0.28"]["base"] >= won["budget_0.28"]["cma"]
        assert NammPolicy.from_checkpoint(path, budget=0.5).surprise_mix == profile["surprise_mix"]
