"""Saved document memories on a small random Llama 3: the round trip is exact (same tensors, same
storage shapes, same logits and answers), asking never changes a memory, and a memory that
cannot be used (other model, tokenizer, policy, dtype or format; truncated or altered) is refused
with a clear error. The file is safetensors and JSON only: loading it never unpickles."""
import json
import os
import pickle
import struct

import pytest
import torch

import namm
from namm import CorruptMemoryError, MemoryMismatchError
from namm.document_memory import FORMAT_VERSION, read_document
from namm.fingerprints import SAMPLE_ELEMENTS, model_hash, policy_hash, tokenizer_hash
from namm.generate import greedy_decode, prefill
from namm.policies import make_policy
from namm.policies.namm import NammPolicy
from namm.prompts import encode_text, question_prompt, stop_token_ids

from tiny_llama import _ByteTokenizer, tiny_llama3

N_UP = 64
DOC = " ".join(f"Item {i} of the ledger weighs {7 * i % 31} kilos and sits on shelf {i % 9}." for i in range(40))
QUESTIONS = ["Which shelf holds item 12?", "How heavy is item 3?", "Name the ledger."]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=2)


def _read(lm, policy, budget, positions="original"):
    return read_document(lm, DOC, policy=policy, budget=budget, n_up=N_UP, positions=positions)


@torch.no_grad()
def _answer_ids(lm, memory, question, max_new_tokens=12):
    """The first logits after the question and the greedy answer's token ids, on a fresh copy."""
    cache = memory.fork()
    logits = prefill(lm, cache, encode_text(lm.tokenizer, question_prompt(lm.tokenizer, question)))
    # plain greedy on a random model: the loop guards would cut its babble at different points
    from namm.decoding import Decoding

    ids = greedy_decode(lm, cache, logits, max_new_tokens, stop_token_ids(lm.tokenizer), Decoding.plain())
    return logits, ids


CASES = [("surprisal", 0.3, "original"), ("snapkv", 0.3, "original"), ("full", None, "original"),
         ("streaming_llm", 48, "original"), ("h2o", 0.3, "reindexed"), ("random", 0.4, "original")]


@pytest.mark.parametrize("policy,budget,positions", CASES)
def test_round_trip_is_exact(tiny, tmp_path, policy, budget, positions):
    memory = _read(tiny, policy, budget, positions)
    if policy != "full":
        assert memory.kv_bytes < memory.full_kv_bytes  # the budget really evicts
    path = namm.save_memory(memory, tmp_path / "doc.mem", storage="float32")
    loaded = namm.load_memory(tiny, path)
    assert loaded.manifest == memory.manifest and loaded.tokens == memory.tokens > 800
    assert loaded.positions == positions and loaded.kv_bytes == memory.kv_bytes
    for a, b in zip(memory.cache.layers, loaded.cache.layers):
        assert (a.length, a.seen, a.since_update, a.n_invalid, a.valid_count) == \
               (b.length, b.seen, b.since_update, b.n_invalid, b.valid_count)
        assert a.keys.shape == b.keys.shape  # the same storage, headroom included
        n = a.length
        for name in ("keys", "values", "valid", "positions"):
            assert torch.equal(getattr(a, name)[:, :, :n], getattr(b, name)[:, :, :n]), name
        assert a.state.keys() == b.state.keys()
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
        assert (a.rope_pos is None) == (b.rope_pos is None)
        if a.rope_pos is not None:
            assert torch.equal(a.rope_pos, b.rope_pos)
    signals = lambda cache: {(s.name, k): t for s in cache.signals for k, t in s.state().items()}  # noqa: E731
    saved, back = signals(memory.cache), signals(loaded.cache)
    assert saved.keys() == back.keys() and all(torch.equal(t, back[k]) for k, t in saved.items())
    for q in QUESTIONS[:2]:
        logits_a, ids_a = _answer_ids(tiny, memory, q)
        logits_b, ids_b = _answer_ids(tiny, loaded, q)
        assert torch.equal(logits_a, logits_b)
        assert ids_a == ids_b and len(ids_a) > 0


def test_namm_keeps_its_surprisal_record(tiny, tmp_path):
    memory = _read(tiny, "surprisal", 0.3)
    assert memory.policy.needs_surprisal  # the shipped checkpoint weighs surprisal
    state = memory.cache.signal("surprisal").state()
    assert state["values"].shape[1] == memory.tokens and "last_logits" in state
    loaded = namm.load_memory(tiny, namm.save_memory(memory, tmp_path / "doc.mem", storage="float32"))
    assert all(torch.equal(v, loaded.cache.signal("surprisal").state()[k]) for k, v in state.items())


def test_ask_answers_from_copies_and_generate_is_read_then_ask(tiny, tmp_path):
    memory = _read(tiny, "snapkv", 0.3)
    before = [layer.export() for layer in memory.cache.layers]
    first = namm.ask(tiny, memory, QUESTIONS, max_new_tokens=10)
    again = namm.ask(tiny, memory, list(reversed(QUESTIONS)), max_new_tokens=10)
    assert again.answers == list(reversed(first.answers))  # no question sees another's tokens
    for snap, layer in zip(before, memory.cache.layers):
        assert layer.length == snap["length"] and torch.equal(layer.keys, snap["keys"])
    once = namm.generate(tiny, DOC, QUESTIONS, policy="snapkv", budget=0.3, n_up=N_UP, max_new_tokens=10)
    assert once.answers == first.answers
    # the figures of ask count the questions only: the document is not read again
    q_tokens = sum(len(tiny.tokenizer.encode(question_prompt(tiny.tokenizer, q))) for q in QUESTIONS)
    assert first.stats.tokens_in == q_tokens and once.stats.tokens_in == q_tokens + memory.tokens
    loaded = namm.load_memory(tiny, namm.save_memory(memory, tmp_path / "m.mem", storage="float32"))
    assert namm.ask(tiny, loaded, QUESTIONS, max_new_tokens=10).answers == first.answers


def test_a_policy_with_running_state_goes_on_from_the_saved_state(tiny, tmp_path):
    params = torch.randn(NammPolicy.num_params(), generator=torch.Generator().manual_seed(3)) * 0.1
    memory = read_document(tiny, DOC, policy=NammPolicy(params=params.numpy(), budget=0.4), n_up=N_UP)
    assert not memory.policy.norm.frozen and memory.policy.norm.count > 0
    fresh = NammPolicy(params=params.numpy(), budget=0.4)  # a policy object: its settings must match
    loaded = namm.load_memory(tiny, namm.save_memory(memory, tmp_path / "doc.mem", storage="float32"), policy=fresh)
    assert loaded.policy is fresh and fresh.norm.count == 0  # put back before each question
    for q in QUESTIONS[:2]:
        assert _answer_ids(tiny, memory, q)[1] == _answer_ids(tiny, loaded, q)[1]
    assert fresh.norm.count == memory.policy_state["norm_count"].item()
    with pytest.raises(MemoryMismatchError, match="policy settings"):
        namm.load_memory(tiny, tmp_path / "doc.mem", policy=NammPolicy(params=params.numpy() * 2, budget=0.4))


# ---- refused: another model, tokenizer, policy, dtype, format ---------------------------------
@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("mem") / "doc.mem"
    return namm.save_memory(_read(tiny, "snapkv", 0.3), path, storage="float32")


class _OtherTokenizer(_ByteTokenizer):
    def encode(self, text, add_special_tokens=False):
        return [3 + (b * 7) % 250 for b in text.encode("utf-8")]


def test_another_model_is_refused(saved):
    with pytest.raises(MemoryMismatchError, match="model weights: saved tiny-llama3"):
        namm.load_memory(tiny_llama3(seed=1, layers=2), saved)


def test_another_tokenizer_is_refused(saved):
    other = tiny_llama3(layers=2)
    other.tokenizer = _OtherTokenizer()
    with pytest.raises(MemoryMismatchError, match="tokenizer") as err:
        namm.load_memory(other, saved)
    assert "model weights" not in str(err.value)  # only what differs is named


def test_another_dtype_is_refused(saved):
    other = tiny_llama3(layers=2)
    other.model.to(torch.bfloat16)
    with pytest.raises(MemoryMismatchError, match="dtype: saved float32, here bfloat16"):
        namm.load_memory(other, saved)


def test_another_policy_or_budget_is_refused(tiny, saved):
    with pytest.raises(MemoryMismatchError, match="policy 'snapkv', not 'h2o'"):
        namm.load_memory(tiny, saved, policy="h2o")
    with pytest.raises(MemoryMismatchError, match="budget: saved {'fraction': 0.3}, here {'fraction': 0.5}"):
        namm.load_memory(tiny, saved, policy=make_policy("snapkv", 0.5))
    assert namm.load_memory(tiny, saved, policy="SnapKV").policy.name == "snapkv"  # the same, spelt otherwise


def _header(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header, body):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def test_another_format_version_is_refused(tiny, saved, tmp_path):
    header, body = _header(saved)
    header["__metadata__"]["format_version"] = str(FORMAT_VERSION + 1)
    _write(tmp_path / "v.mem", header, body)
    with pytest.raises(MemoryMismatchError, match=f"format version {FORMAT_VERSION + 1}, this namm reads"):
        namm.load_memory(tiny, tmp_path / "v.mem")


def test_a_memory_asked_under_another_model_is_refused(tiny):
    memory = _read(tiny, "streaming_llm", 48)
    with pytest.raises(MemoryMismatchError, match="model weights"):
        namm.ask(tiny_llama3(seed=2, layers=2), memory, "q")


# ---- refused: damaged files --------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 7, 100, -1000, -1])
def test_a_truncated_file_is_refused(tiny, saved, tmp_path, keep):
    data = saved.read_bytes()
    (tmp_path / "t.mem").write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(CorruptMemoryError, match="truncated"):
        namm.load_memory(tiny, tmp_path / "t.mem")


def test_an_altered_byte_or_manifest_is_refused(tiny, saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor
    (tmp_path / "b.mem").write_bytes(bytes(data))
    with pytest.raises(CorruptMemoryError, match="checksum mismatch"):
        namm.load_memory(tiny, tmp_path / "b.mem")
    header, body = _header(saved)
    manifest = json.loads(header["__metadata__"]["manifest"])
    manifest["tokens"] += 1
    header["__metadata__"]["manifest"] = json.dumps(manifest)
    _write(tmp_path / "m.mem", header, body)
    with pytest.raises(CorruptMemoryError, match="checksum mismatch"):
        namm.load_memory(tiny, tmp_path / "m.mem")


def test_not_a_memory_is_refused(tiny, tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CorruptMemoryError, match="not a namm memory"):
        namm.load_memory(tiny, tmp_path / "plain.safetensors")
    torch.save({"x": torch.zeros(3)}, tmp_path / "pickled.pt")
    with pytest.raises(CorruptMemoryError):
        namm.load_memory(tiny, tmp_path / "pickled.pt")
    with pytest.raises(FileNotFoundError):
        namm.load_memory(tiny, tmp_path / "missing.mem")


# ---- the file: safetensors + JSON, nothing that runs ------------------------------------------
def test_the_file_is_safetensors_and_json_only(saved):
    data = saved.read_bytes()
    header, body = _header(saved)
    meta = header.pop("__metadata__")
    assert set(meta) == {"format", "format_version", "manifest", "layout", "sha256"}
    assert meta["format"] == "namm-memory"
    json.loads(meta["manifest"]), json.loads(meta["layout"])  # JSON, both
    spans = sorted(tuple(t["data_offsets"]) for t in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(body)  # tensors cover the body exactly
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert {t["dtype"] for t in header.values()} <= {"F32", "F16", "BF16", "I64", "BOOL", "U8", "F64"}
    assert b"\x80\x04\x95" not in data[:8 + len(json.dumps(header))]  # no pickle protocol marker
    assert not data.startswith(b"PK")  # not a torch (zip) checkpoint


def test_loading_never_unpickles(tiny, saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a memory file was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert namm.load_memory(tiny, saved).policy.name == "snapkv"


def test_save_is_atomic(tiny, tmp_path, monkeypatch):
    memory = _read(tiny, "streaming_llm", 48)
    path = namm.save_memory(memory, tmp_path / "doc.mem", storage="float32")
    good = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("namm.memory_file.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        namm.save_memory(_read(tiny, "streaming_llm", 32), path, storage="float32")
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["doc.mem"]  # old file, no leftovers


def test_read_manifest_reads_the_header_only(tiny, saved):
    manifest = namm.read_manifest(saved)
    assert manifest.policy == "snapkv" and manifest.budget == {"fraction": 0.3} and manifest.n_up == N_UP
    assert manifest.model == "tiny-llama3" and manifest.model_sha256 == tiny.weights_sha256
    assert manifest.dtype == "float32" and manifest.layers == 2 and manifest.kv_heads == 2 and manifest.head_dim == 16


# ---- fingerprints ------------------------------------------------------------------------------
def test_model_hash_is_stable_and_sees_any_change(tiny):
    assert model_hash(tiny_llama3(layers=2).model) == tiny.weights_sha256
    other = tiny_llama3(layers=2)
    with torch.no_grad():
        next(other.model.parameters()).view(-1)[5] += 1e-3
    assert model_hash(other.model) != tiny.weights_sha256
    big = torch.nn.Linear(SAMPLE_ELEMENTS // 64 + 1, 128, bias=False)  # sampled, not hashed whole
    big.config = tiny.model.config
    before = model_hash(big)
    with torch.no_grad():
        big.weight.view(-1)[::997] += 1.0
    assert model_hash(big) != before


def test_tokenizer_hash_sees_the_encoding():
    assert tokenizer_hash(_ByteTokenizer()) == tokenizer_hash(_ByteTokenizer())
    assert tokenizer_hash(_ByteTokenizer()) != tokenizer_hash(_OtherTokenizer())


def test_policy_hash_names_settings_not_state(tiny):
    assert policy_hash(make_policy("snapkv", 0.3)) == policy_hash(make_policy("snapkv", 0.3))
    assert policy_hash(make_policy("snapkv", 0.3)) != policy_hash(make_policy("snapkv", 0.4))
    assert policy_hash(make_policy("surprisal")) == policy_hash(make_policy("surprisal", 0.28))  # the checkpoint's own
    rnd = make_policy("random", 0.4)
    before = policy_hash(rnd)
    torch.rand(3, generator=rnd.generator)
    assert policy_hash(rnd) == before  # the generator is state, saved with the memory
    namm_policy = make_policy("surprisal")
    assert namm_policy.checkpoint_sha256 and len(namm_policy.checkpoint_sha256) == 64


# ---- the command line (the tiny model stands in for the default one) -------------------------
def test_cli_save_memory_then_memory_question(tiny, tmp_path, monkeypatch, capsys):
    from namm.cli import main

    monkeypatch.setattr(namm, "load_model", lambda path=None: tiny)
    doc, mem = tmp_path / "doc.txt", tmp_path / "doc.mem"
    doc.write_text(DOC)
    # reading and saving needs no question
    assert main(["generate", "--file", str(doc), "--save-memory", str(mem), "--policy", "snapkv",
                 "--budget", "0.3", "--n-up", str(N_UP)]) == 0
    assert "memory saved to" in capsys.readouterr().err
    assert main(["generate", "--memory", str(mem), "--question", QUESTIONS[0], "--question", QUESTIONS[1],
                 "--max-new-tokens", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = namm.ask(tiny, namm.load_memory(tiny, mem), QUESTIONS[:2], max_new_tokens=6)
    assert out["answers"] == expected.answers and out["policy"] == "snapkv"
    with pytest.raises(SystemExit, match="policy 'snapkv', not 'h2o'"):
        main(["generate", "--memory", str(mem), "--question", "q", "--policy", "h2o"])
    (tmp_path / "cut.mem").write_bytes(mem.read_bytes()[:-64])
    with pytest.raises(SystemExit, match="truncated"):
        main(["generate", "--memory", str(tmp_path / "cut.mem"), "--question", "q"])
    with pytest.raises(SystemExit, match="no such file"):
        main(["generate", "--memory", str(tmp_path / "missing.mem"), "--question", "q"])


@pytest.mark.parametrize("args,message", [
    (["--file", "DOC", "--memory", "MEM", "--question", "q"], "--file (a document) or --memory"),
    ([], "--file (a document) or --memory"),
    (["--memory", "MEM", "--question", "q", "--budget", "0.5"], "--budget: fixed when the memory was read"),
    (["--memory", "MEM", "--question", "q", "--n-up", "64"], "--n-up: fixed"),
    (["--file", "DOC", "--save-memory", "MEM", "--query-aware", "--question", "q"], "--query-aware depends"),
    (["--memory", "MEM"], "--question or --instruction"),
])
def test_cli_rejects_meaningless_memory_options(tmp_path, capsys, args, message):
    from namm.cli import main

    args = [a.replace("DOC", str(tmp_path / "d.txt")).replace("MEM", str(tmp_path / "m.mem")) for a in args]
    with pytest.raises(SystemExit):
        main(["generate", *args])
    assert message in capsys.readouterr().err
