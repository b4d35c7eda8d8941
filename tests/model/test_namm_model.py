"""The memory on the real default model (SmolLM2-135M-Instruct, CPU)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import namm
from namm.generate import greedy_decode, prefill
from namm.memory import ATTN_IMPLEMENTATION, NammCache
from namm.policies import make_policy
from namm.policies.namm import NammPolicy
from namm.prompts import encode_text, split_prompt, stop_token_ids

from exactness import MaskOnlyCache, PositionHashPolicy, RecordingPolicy, chunked_logits, masked_reference_logits

pytestmark = pytest.mark.model

DOC = " ".join(
    f"Record {i}: the warehouse in district {i % 7} shipped {13 * i % 97} crates of {['tea', 'rice', 'salt'][i % 3]}."
    for i in range(70)
) + " The access code for the vault is 58213."
QUESTION = "What is the access code for the vault?"


def _prompt_ids(lm):
    parts = split_prompt(lm.tokenizer, DOC, QUESTION)
    return torch.cat([encode_text(lm.tokenizer, parts.context), encode_text(lm.tokenizer, parts.question)], dim=1)


@pytest.fixture(scope="module")
def reference_tokens(lm):
    """Plain transformers: SDPA attention, its own DynamicCache, greedy."""
    ids = _prompt_ids(lm)
    assert ids.shape[1] > 1100  # crosses two 512-token update boundaries
    lm.model.set_attn_implementation("sdpa")
    try:
        out = lm.model.generate(ids, max_new_tokens=24, do_sample=False)
    finally:
        lm.model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return ids, out[0, ids.shape[1]:].tolist()


def _our_tokens(lm, ids, policy):
    cache = NammCache(lm.model.config, policy, n_up=512)
    logits = prefill(lm, cache, ids)
    return greedy_decode(lm, cache, logits, 24, stop_token_ids(lm.tokenizer)), cache


@pytest.mark.parametrize("policy", [make_policy("full"), NammPolicy(params=np.zeros(NammPolicy.num_params()))],
                         ids=["full", "namm-zero"])
def test_keep_everything_matches_plain_generate_token_for_token(lm, reference_tokens, policy):
    ids, ref = reference_tokens
    ours, cache = _our_tokens(lm, ids, policy)
    stop = stop_token_ids(lm.tokenizer)
    assert ours == [t for t in ref if t not in stop][: len(ours)] and len(ours) >= min(len(ref) - 1, 20)
    if policy.name == "namm":
        assert cache.layers[0].seen > 1024 and cache.kept_fraction() == 1.0


def test_hf_generate_runs_on_the_forgetting_cache(lm, reference_tokens):
    ids, ref = reference_tokens
    cache = NammCache(lm.model.config, make_policy("full"), n_up=512)
    out = lm.model.generate(ids, past_key_values=cache, max_new_tokens=24, do_sample=False)
    assert out[0, ids.shape[1]:].tolist() == ref


def test_eviction_is_exact_on_the_real_model(lm):
    n_up = 128
    ids = _prompt_ids(lm)[:, : 4 * n_up + 40]
    rec = RecordingPolicy(make_policy("streaming_llm", 100))
    ours = chunked_logits(lm.model, NammCache(lm.model.config, rec, n_up=n_up), ids, n_up)
    ref = masked_reference_logits(lm, ids, rec.kept_positions, n_up)
    assert len(rec.kept_positions) == 4
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=1e-3)
    assert (ours[-1].argmax() == ref[-1].argmax()).item()


def test_ragged_eviction_equals_masking_on_the_real_model(lm):
    n_up = 128
    ids = _prompt_ids(lm)[:, : 3 * n_up + 9]
    a = chunked_logits(lm.model, NammCache(lm.model.config, PositionHashPolicy(), n_up=n_up), ids, n_up)
    b = chunked_logits(lm.model, MaskOnlyCache(lm.model.config, PositionHashPolicy(), n_up=n_up), ids, n_up)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


def test_generate_finds_the_fact_and_reports_memory(lm):
    full = namm.generate(lm, DOC, QUESTION, policy="full", max_new_tokens=16)
    assert "58213" in full.text
    kept = namm.generate(lm, DOC, [QUESTION, "Which district shipped the most tea?"], policy="h2o", budget=0.3,
                         max_new_tokens=16)
    s = kept.stats
    assert len(kept.answers) == 2 and s.tokens_in > 1100 and s.tokens_out > 0
    assert 0.2 < s.kv_kept_fraction < 0.4
    # at 1.4k tokens the peak is dominated by the 512-token window in flight; at 16k it is ~28%
    assert s.kv_bytes_peak < 0.6 * s.kv_bytes_full_peak
    assert len(s.kv_kept_per_layer) == lm.model.config.num_hidden_layers
    assert s.seconds >= s.seconds_prefill > 0 and s.seconds_policy > 0


def _cli(*args, input_file=None):
    return subprocess.run([sys.executable, "-m", "namm.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_generate_json(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    r = _cli("generate", "--policy", "snapkv", "--budget", "0.5", "--file", str(doc), "--question", QUESTION,
             "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "policy", "tokens_in", "tokens_out", "kv_kept_fraction", "kv_bytes_peak",
                "kv_bytes_full_peak", "seconds"):
        assert key in out
    assert out["policy"] == "snapkv" and out["kv_kept_fraction"] < 0.7


@pytest.mark.parametrize("args,message", [
    (["--file", "/nonexistent.txt", "--question", "q"], "no such file"),
    (["--file", "EMPTY", "--question", "q"], "empty"),
    (["--file", "DOC", "--question", "q", "--budget", "-2"], "budget"),
    (["--file", "DOC", "--question", "q", "--policy", "lru"], "invalid choice"),
    (["--file", "DOC"], "--question or --instruction"),
    (["--file", "DOC", "--question", "q", "--n-up", "100"], "multiple of 16"),
])
def test_cli_rejects_bad_arguments(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "doc.txt").write_text("A short document.")
    args = [a.replace("EMPTY", str(tmp_path / "empty.txt")).replace("DOC", str(tmp_path / "doc.txt")) for a in args]
    r = _cli("generate", *args)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
