"""Saved document memories on the real default model (SmolLM2-135M-Instruct, CPU): a document
read once and saved answers several questions in a row, after loading, with exactly the tokens
the memory kept in the process gives; and the CLI's --save-memory / --memory round trip."""
import json
import subprocess
import sys

import pytest
import torch

import namm
from namm.generate import _encode, _stop_ids, greedy_decode, prefill
from namm.prompts import question_prompt

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
        logits = prefill(lm, cache, _encode(lm.tokenizer, question_prompt(lm.tokenizer, q)))
        out.append(greedy_decode(lm, cache, logits, MAX_NEW, _stop_ids(lm.tokenizer)))
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
    path = namm.save_memory(memory, tmp_path / "doc.mem")
    loaded = namm.load_memory(lm, path)
    assert loaded.manifest.policy == policy and loaded.manifest.model_sha256 == lm.weights_sha256
    kept = _answers(lm, memory)
    assert all(kept) and _answers(lm, loaded) == kept


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
