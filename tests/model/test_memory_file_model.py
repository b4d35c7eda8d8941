"""Saved document memories on the real default model (SmolLM2-135M-Instruct, CPU): a document
read once and saved answers several questions in a row, after loading, with exactly the tokens
the memory kept in the process gives; compact storages (float16, bfloat16, int8) load within
their rounding and still answer; and the CLI's --save-memory / --memory round trip."""
import json
import subprocess
import sys

import pytest
import torch

import namm
from namm.generate import greedy_decode, prefill
from namm.prompts import encode_text, question_prompt, stop_token_ids

pytestmark = pytest.mark.model

# ~1.3k tokens: two updates while reading plus the final one, so every evicting policy evicts
DOC = " ".join(
    f"Depot {i} in the {['north', 'south', 'east', 'west'][i % 4]} zone stores {17 * i % 89} barrels of "
    f"{['oil', 'wine', 'grain', 'tar'][i % 4]}, checked by inspector {['Ames', 'Bose', 'Cruz'][i % 3]}."
    for i in range(48)
) + " The master key of depot 31 is kept under the name Orchid-7240."
QUESTIONS = ["What name is the master key of depot 31 kept under?",
             "How many barrels does depot 5 store?",
             "Who checked depot 2?"]
MAX_NEW = 8


@torch.no_grad()
def _answers(lm, memory):
    """Each question's greedy answer token ids, asked in a row, each on its own copy."""
    out = []
    for q in QUESTIONS:
        cache = memory.fork()
        logits = prefill(lm, cache, encode_text(lm.tokenizer, question_prompt(lm.tokenizer, q)))
        out.append(greedy_decode(lm, cache, logits, MAX_NEW, stop_token_ids(lm.tokenizer)))
    return out


@pytest.mark.parametrize("policy,budget", [("surprisal", None), ("full", None), ("streaming_llm", 0.3),
                                           ("snapkv", 0.3)])
def test_loaded_memory_answers_token_for_token(lm, tmp_path, policy, budget):
    memory = namm.read_document(lm, DOC, policy=policy, budget=budget)
    assert memory.tokens > 1100
    if policy == "full":
        assert memory.kv_bytes == memory.full_kv_bytes
    else:
        assert memory.kv_bytes < 0.45 * memory.full_kv_bytes  # it did evict
    path = namm.save_memory(memory, tmp_path / "doc.mem", storage="float32")  # exact, whatever the default
    loaded = namm.load_memory(lm, path)
    assert loaded.manifest.policy == policy and loaded.manifest.model_sha256 == lm.weights_sha256
    kept = _answers(lm, memory)
    assert all(kept) and _answers(lm, loaded) == kept


@pytest.fixture(scope="module")
def shipped(lm, tmp_path_factory):
    """DOC read once by the shipped memory, saved exactly and in each compact storage."""
    memory = namm.read_document(lm, DOC)
    folder = tmp_path_factory.mktemp("storage")
    files = {s: namm.save_memory(memory, folder / f"{s}.mem", storage=s)
             for s in ("float32", "float16", "bfloat16", "int8")}
    return memory, files


@torch.no_grad()
def _first_logits(lm, memory, question):
    cache = memory.fork()
    return prefill(lm, cache, encode_text(lm.tokenizer, question_prompt(lm.tokenizer, question)))


# per storage: how far an element may move (float16 / bfloat16: round to nearest, relative; int8:
# half a step of its channel's scale, checked below) and how far the first answer token's logits
# may then move (measured on this document: 0.004, 0.03 and 0.21; the bounds leave room for
# other CPU kernels, and a dequantisation that forgot its scale moves them by far more)
RTOL = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
LOGIT_BOUND = {"float16": 0.05, "bfloat16": 0.25, "int8": 1.0}


@pytest.mark.parametrize("storage", ["float16", "bfloat16", "int8"])
def test_a_compact_memory_loads_within_its_rounding_and_answers(lm, shipped, storage):
    memory, files = shipped
    loaded = namm.load_memory(lm, files[storage])
    assert loaded.manifest.storage == storage == namm.read_manifest(files[storage]).storage
    moved = 0.0
    for a, b in zip(memory.cache.layers, loaded.cache.layers):
        n = a.length
        assert b.keys.dtype == a.keys.dtype == torch.float32
        assert torch.equal(a.valid[:, :, :n], b.valid[:, :, :n]) and torch.equal(a.positions[:, :, :n],
                                                                                   b.positions[:, :, :n])
        for name in ("keys", "values"):
            x, y = getattr(a, name)[:, :, :n], getattr(b, name)[:, :, :n]
            if storage == "int8":
                step = x.abs().amax(dim=2, keepdim=True) / 127
                assert bool(((x - y).abs() <= step / 2 * (1 + 1e-4)).all()), name
            else:
                assert torch.allclose(y, x, rtol=RTOL[storage], atol=2.0**-25), name
            moved = max(moved, float((x - y).abs().max()))
    assert moved > 0  # it really was rounded
    for q in QUESTIONS:
        diff = float((_first_logits(lm, memory, q) - _first_logits(lm, loaded, q)).abs().max())
        assert 0 < diff < LOGIT_BOUND[storage], (q, diff)
    # on this document every compact storage still gives the exact memory's greedy answers
    # (measured; the held-out quality over many prompts is bench/memory_storage.py)
    assert _answers(lm, loaded) == _answers(lm, memory)


def test_compact_files_shrink_by_their_dtype(shipped):
    memory, files = shipped
    size = {s: p.stat().st_size for s, p in files.items()}
    kv = memory.kv_bytes  # float32 keys and values of the slots in use
    rest = size["float32"] - kv  # positions, masks, surprisal record, header
    assert 0 < rest < 0.05 * kv
    assert abs(size["float16"] - (rest + kv / 2)) < 4096
    assert abs(size["bfloat16"] - (rest + kv / 2)) < 4096
    cfg = memory.manifest
    scales = 2 * cfg.layers * cfg.kv_heads * cfg.head_dim * 4  # keys and values, per layer, head and channel
    # the header also names two more tensors per layer (the scales): ~5 KiB of JSON here
    assert abs(size["int8"] - (rest + kv / 4 + scales)) < 4096 + cfg.layers * 2 * 120
    assert size["int8"] < 0.3 * size["float32"]


def test_cli_saves_a_memory_then_answers_from_it(lm, tmp_path, monkeypatch, capsys):
    doc, mem = tmp_path / "doc.txt", tmp_path / "doc.mem"
    doc.write_text(DOC[: len(DOC) // 2])  # the CLI's wiring is under test here, not the memory
    first = subprocess.run([sys.executable, "-m", "namm.cli", "generate", "--file", str(doc), "--save-memory",
                            str(mem), "--question", QUESTIONS[1], "--max-new-tokens", str(MAX_NEW), "--json"],
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "memory saved to" in first.stderr and mem.is_file()
    # the second command in this process, on the session's model (a second subprocess would
    # spend its time loading the model again)
    from namm.cli import main

    monkeypatch.setattr(namm, "load_model", lambda path=None: lm)
    assert main(["generate", "--memory", str(mem), "--question", QUESTIONS[1], "--question", QUESTIONS[2],
                 "--max-new-tokens", str(MAX_NEW), "--json"]) == 0
    a, b = json.loads(first.stdout), json.loads(capsys.readouterr().out)
    assert b["answers"][0] == a["answers"][0] and len(b["answers"]) == 2
    assert b["policy"] == "surprisal" and b["tokens_in"] < 100  # only the questions were read
