"""The evolution's fast candidate path (shared first chunk restored from a snapshot) answers
exactly what namm.generate answers, on a small random Llama 3 (no download)."""
import sys
from pathlib import Path

import numpy as np

import namm
from namm.evolve import TaskFitness, config_from_dict
from namm.policies.namm import NammPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_llama import tiny_llama3  # noqa: E402


def test_prefix_snapshot_path_matches_generate(tmp_path):
    lm = tiny_llama3(layers=2)
    cfg = config_from_dict({"stages": [{"tasks": ["passkey"], "generations": 1}], "lengths": [256],
                            "n_per_task": 1, "n_up": 128, "budget": 0.3, "only_solved": False,
                            "max_new_tokens": 8, "fidelity_weight": 0.1, "out_dir": str(tmp_path)})
    fit = TaskFitness(cfg, lm=lm, out_dir=tmp_path)
    try:
        fit.prepare(lambda m: None)
        assert fit.norm_state["frozen"] and fit.norm_state["count"] > 0
        prompts = fit.prompts["train"]
        assert len(prompts) == 1 and all(p.prefix is not None for p in prompts)
        rng = np.random.default_rng(0)
        for params in (rng.normal(0, 0.5, NammPolicy.num_params()),):
            pol = NammPolicy(params=params.astype(np.float32), budget=0.3, norm=fit.norm())
            for p in prompts:
                ref = namm.generate(lm, p.sample.context, [p.sample.question], policy=pol, max_new_tokens=8,
                                    n_up=128)
                text, score, kept, fid = fit._run_one(p, pol)
                assert text == ref.text
                assert kept == ref.stats.kv_kept_fraction and kept <= 0.35  # the budget caps the document; the question comes on top
                assert 0 < fid <= 1
                # and the snapshot restores the very same cache as reading the chunk
                snap, p.prefix = p.prefix, None
                try:
                    assert fit._run_one(p, pol)[:3] == (text, score, kept)
                finally:
                    p.prefix = snap
        res = fit(np.zeros(NammPolicy.num_params()))
        assert res.forwards > 0 and 0 < res.kept_fraction <= 0.35
    finally:
        fit.close()
