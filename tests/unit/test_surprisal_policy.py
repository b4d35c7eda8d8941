"""`surprisal` is the shipped memory (what `namm` meant until the zero scorer was named for what it
is); `namm` is the learned attention memory and is refused where no evolved scorer exists."""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import namm
from namm.checkpoints import default_checkpoint
from namm.errors import InputError, NoTrainedScorerError
from namm.policies import POLICIES, make_policy
from namm.policies.namm import NammPolicy
from namm.policies.surprisal import SurprisalPolicy
from namm.spec import DEFAULT_POLICY, POLICY_NAMES, GenerationRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_llama import tiny_llama3  # noqa: E402

N_UP = 64
TEXT = ("The vault code is 7351. Ledgers arrive on Tuesday; the auditor signs in red ink. " * 12
        + "Marguerite keeps the spare key under the third stone. " + "Filler words about nothing much. " * 20)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=2)


def old_namm(model_name=None, budget="checkpoint"):
    """What `make_policy("namm")` built before `surprisal` existed: the shipped file, zero scorer."""
    return NammPolicy.from_checkpoint(default_checkpoint(model_name), budget=budget, model_name=model_name)


def test_surprisal_is_listed_and_is_the_default():
    assert "surprisal" in POLICY_NAMES and POLICIES["surprisal"] is SurprisalPolicy
    assert DEFAULT_POLICY == "surprisal" and GenerationRequest(context="x").policy == "surprisal"


def test_surprisal_has_the_shipped_settings_and_no_scorer():
    old, pol = old_namm(), make_policy("surprisal")
    assert not old.params.any()  # the shipped scorer is zero: the reason for the new name
    assert type(pol) is SurprisalPolicy and not isinstance(pol, NammPolicy)
    assert not hasattr(pol, "params") and not hasattr(pol, "norm") and pol.needs_attention is False
    for key in ("budget", "use_threshold", "sinks", "recent", "surprise_mix", "surprise_close", "min_keep",
                "word_starts_model", "checkpoint_sha256"):
        assert getattr(pol, key) == getattr(old, key), key
    assert torch.equal(pol.word_starts, old.word_starts)
    assert pol.budget == 0.28
    assert make_policy("surprisal", 0.5).recent == old_namm(budget=0.5).recent == 0.15  # the 0.4+ profile


def test_surprisal_selects_what_the_zero_scorer_namm_selected():
    from namm.policies.base import UpdateContext

    g = torch.Generator().manual_seed(0)
    for budget in ("checkpoint", 0.5, 300):
        old = old_namm(budget=budget)
        pol = SurprisalPolicy.from_checkpoint(default_checkpoint(None), budget=budget)
        s, h = 900, 3
        positions = torch.arange(s).expand(1, h, s).clone()
        ctx = UpdateContext(layer_idx=0, keys=torch.randn(1, h, s, 4, generator=g), values=torch.randn(1, h, s, 4),
                            positions=positions, valid=torch.ones(1, h, s, dtype=torch.bool), seen=s, n_new=128,
                            surprisal=torch.rand(1, s, generator=g) * 8,
                            token_ids=torch.randint(0, 49152, (1, s), generator=g))
        assert torch.equal(pol.scores(ctx), old.scores(ctx))
        assert torch.equal(pol.select(ctx), old.select(ctx)), budget


def test_surprisal_generates_exactly_what_the_old_namm_did(tiny):
    for budget in (None, 0.5):
        new = namm.generate(tiny, TEXT, ["What is the vault code?", "Where is the key?"], policy="surprisal",
                            budget=budget, max_new_tokens=6, n_up=N_UP)
        pol = old_namm(tiny.name, "checkpoint" if budget is None else budget)
        old = namm.generate(tiny, TEXT, ["What is the vault code?", "Where is the key?"], policy=pol,
                            budget=budget, max_new_tokens=6, n_up=N_UP)
        assert new.answers == old.answers
        assert new.stats.kv_kept_fraction < 1.0  # it did evict
        a, b = dataclasses.asdict(new.stats), dataclasses.asdict(old.stats)
        for key in ("kv_kept_per_layer", "kv_kept_fraction", "kv_bytes_peak", "kv_token_steps", "kv_updates"):
            assert a[key] == b[key], key


def test_namm_with_the_zero_scorer_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(NoTrainedScorerError, match="use policy 'surprisal'") as err:
        make_policy("namm")
    assert isinstance(err.value, InputError) and "no trained NAMM attention scorer" in str(err.value)
    with pytest.raises(NoTrainedScorerError):
        make_policy("namm", 0.3, model_name="SmolLM2-135M-Instruct")
    with pytest.raises(NoTrainedScorerError):
        make_policy("namm", checkpoint=default_checkpoint(None))
    with pytest.raises(NoTrainedScorerError):
        namm.generate(tiny_llama3(layers=1), "some text " * 20, "q?", policy="namm", max_new_tokens=2, n_up=N_UP)


def test_namm_with_an_evolved_scorer_or_explicit_params_still_works(tmp_path):
    ckpt = torch.load(default_checkpoint(None), weights_only=False)
    ckpt["params"] = torch.full_like(ckpt["params"], 0.01)
    torch.save(ckpt, tmp_path / "evolved.pt")
    pol = make_policy("namm", checkpoint=tmp_path / "evolved.pt")
    assert isinstance(pol, NammPolicy) and pol.has_trained_scorer and pol.needs_attention and pol.budget == 0.28
    # evolution builds NAMMs from parameter vectors, the all-zero start included
    zero = make_policy("namm", 0.3, params=np.zeros(NammPolicy.num_params(), dtype=np.float32))
    assert isinstance(zero, NammPolicy) and not zero.has_trained_scorer
    with pytest.raises(ValueError, match="reads no checkpoint"):
        make_policy("h2o", checkpoint=tmp_path / "evolved.pt")
