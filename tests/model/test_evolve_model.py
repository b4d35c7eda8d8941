"""One real CMA-ES generation on the default model (SmolLM2-135M, CPU): population 4, one short
train prompt. Checks the whole path: full-cache reference, frozen normalisation, prefix
snapshot, candidates, checkpoint and the NAMM file it writes."""
import json
from pathlib import Path

import numpy as np
import pytest

from namm import evolve
from namm.evolve import TaskFitness, config_from_dict
from namm.policies.namm import NammPolicy

pytestmark = pytest.mark.model


def test_one_generation_on_the_real_model(lm, tmp_path):
    cfg = config_from_dict({
        "stages": [{"tasks": ["passkey"], "generations": 1}], "population": 4, "lengths": [256],
        "n_per_task": 1, "n_up": 128, "budget": 0.3, "only_solved": False, "max_new_tokens": 12,
        "fidelity_weight": 0.25, "out_dir": str(tmp_path / "run")})
    fit = TaskFitness(cfg, lm=lm, out_dir=Path(cfg.out_dir))
    try:
        state = evolve.run(cfg, fitness=fit, log=lambda m: None, progress=False)
    finally:
        fit.close()
    assert state.done and state.generation == 1 and len(fit.prompts["train"]) == 1
    assert fit.prompts["train"][0].prefix is not None  # the shared first chunk was snapshotted
    row = state.logs[0]
    assert row["forwards"] > 0 and 0 < row["mean_solution_kept"] <= 0.4
    assert 0 < row["mean_solution_fidelity"] <= 1
    out = Path(cfg.out_dir)
    assert len(json.loads((out / "log.json").read_text())) == 1
    assert (out / "curves.png").exists() and (out / "checkpoint.pkl").exists()
    pol = NammPolicy.from_checkpoint(out / "mean.pt")
    assert pol.norm.frozen and pol.norm.count > 0 and pol.budget == 0.3
    np.testing.assert_allclose(pol.params.numpy(), evolve.load_optimizer(state.optimizer).mean.astype(np.float32))
