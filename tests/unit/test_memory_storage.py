"""Compact storage of saved memories (namm/memory_file.py, storage=float32|float16|bfloat16|int8):
the int8 quantiser on plain tensors, then round trips on a small random Llama 3. Only keys and
values are compacted (everything else comes back bit for bit), each within the rounding its
dtype allows; the file says which storage it used, its keys and values take the bytes that
dtype takes, a tampered scale fails the checksum, and version-1 files (before storage) load."""
import json
import struct

import pytest
import torch

import namm
from namm import CorruptMemoryError
from namm.document_memory import read_document
from namm.memory_file import DEFAULT_STORAGE, STORAGES, _checksum, dequantize_int8, quantize_int8

from tiny_llama import tiny_llama3

N_UP = 64
DOC = " ".join(f"Crate {i} holds {11 * i % 37} lamps and waits at dock {i % 7}." for i in range(40))


# ---- the quantiser, on plain tensors -----------------------------------------------------------
def _channels(seed=0, b=1, h=3, n=50, d=8):
    """[B, H, n, D] with very different magnitudes per channel (as keys have: outlier channels)."""
    g = torch.Generator().manual_seed(seed)
    mags = torch.logspace(-3, 2, d)
    return torch.randn(b, h, n, d, generator=g) * mags


def test_int8_scale_is_per_layer_head_and_channel():
    x = _channels()
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (1, 3, 1, 8)
    assert torch.allclose(scale, x.abs().amax(dim=2, keepdim=True) / 127)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127  # symmetric: -128 is never used
    # the largest |x| of every channel of every head is stored as +-127 exactly
    at_max = x.abs() == x.abs().amax(dim=2, keepdim=True)
    assert bool((q[at_max].abs() == 127).all())


def test_int8_error_is_within_half_a_step_of_each_channels_own_scale():
    x = _channels(seed=1)
    q, scale = quantize_int8(x)
    err = (dequantize_int8(q, scale) - x).abs()
    assert bool((err <= scale / 2 * (1 + 1e-4)).all())
    # a channel of magnitude 1e-3 next to one of 1e2 keeps its own precision: per channel, not per head
    small = x[..., 0].abs().max()
    assert float(err[..., 0].max()) <= float(small) / 254 * (1 + 1e-4)
    assert float(err[..., 0].max()) < 1e-4  # a per-head scale would allow ~1.6 here
    # and the error is a real rounding, not zero (the test could not pass by copying)
    assert float(err.max()) > 0


def test_int8_zero_channels_empty_tensors_and_non_finite():
    x = _channels(seed=2)
    x[:, 1, :, 3] = 0
    q, scale = quantize_int8(x)
    assert float(scale[0, 1, 0, 3]) == 1.0 and bool((q[:, 1, :, 3] == 0).all())
    assert bool((dequantize_int8(q, scale)[:, 1, :, 3] == 0).all())
    q0, s0 = quantize_int8(torch.zeros(1, 2, 0, 4))
    assert q0.shape == (1, 2, 0, 4) and s0.shape == (1, 2, 1, 4)
    x[0, 0, 5, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8(x)
    with pytest.raises(ValueError, match=r"\[B, H, L, D\]"):
        quantize_int8(torch.zeros(4, 4))


def test_int8_dequantizes_to_the_asked_dtype():
    x = _channels(seed=3)
    q, scale = quantize_int8(x)
    assert dequantize_int8(q, scale, torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(dequantize_int8(q, scale, torch.bfloat16), dequantize_int8(q, scale).bfloat16())


# ---- round trips on a small model --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3(layers=2)


@pytest.fixture(scope="module")
def memory(tiny):
    m = read_document(tiny, DOC, policy="snapkv", budget=0.3, n_up=N_UP)
    assert m.kv_bytes < m.full_kv_bytes and m.tokens > 500
    return m


@pytest.fixture(scope="module")
def files(memory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("storage")
    return {s: namm.save_memory(memory, folder / f"{s}.mem", storage=s) for s in STORAGES}


def _header(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), 8 + n


def _write(path, header, body):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _kv_bytes(path):
    """Bytes of the keys and values (and their scales) in the file, from its header."""
    header, _ = _header(path)
    return {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items()
            if name != "__metadata__" and (".keys" in name or ".values" in name)}


# how far each storage may move an element x of a float32 memory: round to nearest in float16
# (11-bit significand) or bfloat16 (8 bits); int8: half a
# step of the channel's scale (checked against the scale in the file)
RTOL = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
ATOL = {"float16": 2.0**-25, "bfloat16": 0.0}  # float16 below 2^-14 is subnormal: steps of 2^-24


@pytest.mark.parametrize("storage", STORAGES)
def test_round_trip_of_each_storage(tiny, memory, files, storage):
    loaded = namm.load_memory(tiny, files[storage])
    assert loaded.manifest.storage == storage and namm.read_manifest(files[storage]).storage == storage
    assert loaded.manifest.dtype == "float32" and loaded.tokens == memory.tokens
    header, _ = _header(files[storage])
    assert header["layers.0.keys"]["dtype"] == {"float32": "F32", "float16": "F16", "bfloat16": "BF16",
                                                  "int8": "I8"}[storage]
    assert ("layers.0.keys_scale" in header) == (storage == "int8")
    from safetensors import safe_open

    with safe_open(str(files[storage]), framework="pt") as f:
        stored = {name: f.get_tensor(name) for name in f.keys()}
    moved = 0.0
    for i, (a, b) in enumerate(zip(memory.cache.layers, loaded.cache.layers)):
        n = a.length
        assert b.keys.dtype == torch.float32 and b.keys.shape == a.keys.shape  # the model's dtype, same storage
        # everything but keys and values is exact
        for name in ("valid", "positions"):
            assert torch.equal(getattr(a, name)[:, :, :n], getattr(b, name)[:, :, :n]), name
        assert a.state.keys() == b.state.keys() and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
        assert (a.length, a.seen, a.n_invalid, a.valid_count) == (b.length, b.seen, b.n_invalid, b.valid_count)
        for name in ("keys", "values"):
            x, y = getattr(a, name)[:, :, :n], getattr(b, name)[:, :, :n]
            if storage == "float32":
                assert torch.equal(x, y)
            elif storage == "int8":
                scale = stored[f"layers.{i}.{name}_scale"]
                assert torch.allclose(scale, x.abs().amax(dim=2, keepdim=True) / 127)
                assert bool(((x - y).abs() <= scale / 2 * (1 + 1e-4)).all())
            else:
                assert torch.allclose(y, x, rtol=RTOL[storage], atol=ATOL[storage])
            moved = max(moved, float((x - y).abs().max()))
    assert (moved == 0) == (storage == "float32")  # the compact ones really rounded
    # the signals' records (none for snapkv, whose attention buffer lives in the layers) come back exactly
    assert [s.name for s in loaded.cache.signals] == [s.name for s in memory.cache.signals] == ["attention"]
    # it answers, and close to the exact memory: same first-token logits up to the rounding
    res_a = namm.ask(tiny, memory, "Where does crate 9 wait?", max_new_tokens=4)
    res_b = namm.ask(tiny, loaded, "Where does crate 9 wait?", max_new_tokens=4)
    assert res_b.stats.tokens_out > 0
    if storage == "float32":
        assert res_b.answers == res_a.answers


@pytest.mark.parametrize("storage,ratio", [("float16", 1 / 2), ("bfloat16", 1 / 2), ("int8", 1 / 4)])
def test_keys_and_values_take_the_bytes_of_their_dtype(memory, files, storage, ratio):
    full, compact = _kv_bytes(files["float32"]), _kv_bytes(files[storage])
    kv = {k: v for k, v in compact.items() if not k.endswith("_scale")}
    assert kv.keys() == full.keys()
    assert all(kv[k] == full[k] * ratio for k in kv)
    scales = sum(v for k, v in compact.items() if k.endswith("_scale"))
    b, h, _, d = memory.cache.layers[0].keys.shape
    assert scales == (len(memory.cache.layers) * 2 * b * h * d * 4 if storage == "int8" else 0)
    # the whole file shrinks by the keys' and values' saving (give or take the JSON header)
    size32, size = files["float32"].stat().st_size, files[storage].stat().st_size
    saved = sum(full.values()) - sum(compact.values())
    assert abs((size32 - size) - saved) < 1024


def test_a_tampered_scale_fails_the_checksum(tiny, files, tmp_path):
    header, start = _header(files["int8"])
    lo, hi = header["layers.1.values_scale"]["data_offsets"]
    data = bytearray(files["int8"].read_bytes())
    data[start + (lo + hi) // 2] ^= 0x01
    (tmp_path / "s.mem").write_bytes(bytes(data))
    with pytest.raises(CorruptMemoryError, match="checksum mismatch"):
        namm.load_memory(tiny, tmp_path / "s.mem")


def test_a_storage_label_that_lies_is_refused(tiny, files, tmp_path):
    """A file whose checksum is right but whose storage label disagrees with its tensors (a buggy
    writer): refused as corrupt, never read as the wrong dtype."""
    from safetensors import safe_open

    header, start = _header(files["float16"])
    meta = header["__metadata__"]
    manifest, layout = json.loads(meta["manifest"]), json.loads(meta["layout"])
    manifest["storage"] = layout["storage"] = "bfloat16"
    meta["manifest"], meta["layout"] = json.dumps(manifest, sort_keys=True), json.dumps(layout, sort_keys=True)
    with safe_open(str(files["float16"]), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    meta["sha256"] = _checksum(meta["manifest"], meta["layout"], tensors)
    _write(tmp_path / "lie.mem", header, files["float16"].read_bytes()[start:])
    with pytest.raises(CorruptMemoryError, match="storage says bfloat16"):
        namm.load_memory(tiny, tmp_path / "lie.mem")


def test_a_version_1_file_still_loads(tiny, memory, files, tmp_path):
    """A file as version 1 wrote it (no storage in manifest or layout, keys and values in the
    model's dtype, checksum over those) loads, exactly, and says float32."""
    from safetensors import safe_open

    header, start = _header(files["float32"])
    meta = header["__metadata__"]
    manifest, layout = json.loads(meta["manifest"]), json.loads(meta["layout"])
    del manifest["storage"], layout["storage"]
    manifest["format_version"] = 1
    meta["format_version"] = "1"
    meta["manifest"], meta["layout"] = json.dumps(manifest, sort_keys=True), json.dumps(layout, sort_keys=True)
    with safe_open(str(files["float32"]), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    meta["sha256"] = _checksum(meta["manifest"], meta["layout"], tensors)
    _write(tmp_path / "v1.mem", header, files["float32"].read_bytes()[start:])
    loaded = namm.load_memory(tiny, tmp_path / "v1.mem")
    assert loaded.manifest.format_version == 1 and loaded.manifest.storage == "float32"
    for a, b in zip(memory.cache.layers, loaded.cache.layers):
        assert torch.equal(a.keys[:, :, :a.length], b.keys[:, :, :b.length])
    q = "Where does crate 4 wait?"
    assert namm.ask(tiny, loaded, q, max_new_tokens=4).answers == namm.ask(tiny, memory, q, max_new_tokens=4).answers
    # asked under another LoadedModel of the same weights: the older version is no difference
    assert namm.ask(tiny_llama3(layers=2), loaded, q, max_new_tokens=4).answers


def test_bad_storage_and_float16_overflow_are_refused(tiny, tmp_path):
    m = read_document(tiny, DOC[:400], policy="streaming_llm", budget=48, n_up=N_UP)
    with pytest.raises(ValueError, match="storage must be one of"):
        namm.save_memory(m, tmp_path / "x.mem", storage="int4")
    assert namm.save_memory(m, tmp_path / "y.mem", storage="torch.float16").is_file()  # spelt as a dtype
    m.cache.layers[1].values[0, 0, 0, 0] = 2.0**20  # beyond float16's 65504
    with pytest.raises(ValueError, match="overflow float16"):
        namm.save_memory(m, tmp_path / "z.mem", storage="float16")
    assert not (tmp_path / "z.mem").exists()
    namm.save_memory(m, tmp_path / "b.mem", storage="bfloat16")  # bfloat16 has float32's range
    assert float(namm.load_memory(tiny, tmp_path / "b.mem").cache.layers[1].values[0, 0, 0, 0]) == 2.0**20


def test_default_storage_is_one_of_them(tiny, memory, tmp_path):
    path = namm.save_memory(memory, tmp_path / "d.mem")
    assert DEFAULT_STORAGE in STORAGES and namm.read_manifest(path).storage == DEFAULT_STORAGE
    assert memory.manifest.storage == "float32"  # a memory in RAM is exact


def test_a_16_bit_model_stores_its_own_dtype_by_default(tmp_path, monkeypatch):
    half = tiny_llama3(layers=2)
    half.model.to(torch.bfloat16)
    m = read_document(half, DOC[:600], policy="snapkv", budget=0.3, n_up=N_UP)
    for default in ("float32", "float16"):  # never widened, never rounded to another 16-bit dtype
        monkeypatch.setattr("namm.memory_file.DEFAULT_STORAGE", default)
        path = namm.save_memory(m, tmp_path / f"{default}.mem")
        assert namm.read_manifest(path).storage == "bfloat16"
        loaded = namm.load_memory(half, path)
        assert all(torch.equal(a.keys[:, :, :a.length], b.keys[:, :, :b.length])
                   for a, b in zip(m.cache.layers, loaded.cache.layers))
    monkeypatch.setattr("namm.memory_file.DEFAULT_STORAGE", "int8")  # narrower: used
    assert namm.read_manifest(namm.save_memory(m, tmp_path / "i.mem")).storage == "int8"


def test_a_float16_default_falls_back_to_bfloat16_on_overflow(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("namm.memory_file.DEFAULT_STORAGE", "float16")
    m = read_document(tiny, DOC[:400], policy="streaming_llm", budget=48, n_up=N_UP)
    assert namm.read_manifest(namm.save_memory(m, tmp_path / "a.mem")).storage == "float16"
    m.cache.layers[0].keys[0, 1, 2, 3] = 2.0**17
    path = namm.save_memory(m, tmp_path / "b.mem")
    assert namm.read_manifest(path).storage == "bfloat16"
    assert float(namm.load_memory(tiny, path).cache.layers[0].keys[0, 1, 2, 3]) == 2.0**17


def test_cli_memory_storage(tiny, tmp_path, monkeypatch, capsys):
    from namm.cli import main

    monkeypatch.setattr(namm, "load_model", lambda path=None: tiny)
    doc, mem = tmp_path / "doc.txt", tmp_path / "doc.mem"
    doc.write_text(DOC)
    assert main(["generate", "--file", str(doc), "--save-memory", str(mem), "--memory-storage", "int8",
                 "--policy", "snapkv", "--budget", "0.3", "--n-up", str(N_UP)]) == 0
    assert "keys and values as int8" in capsys.readouterr().err
    assert namm.read_manifest(mem).storage == "int8"
    assert main(["generate", "--memory", str(mem), "--question", "Where does crate 9 wait?",
                 "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answers"] == namm.ask(tiny, namm.load_memory(tiny, mem), "Where does crate 9 wait?",
                                      max_new_tokens=4).answers
    with pytest.raises(SystemExit):
        main(["generate", "--memory", str(mem), "--question", "q", "--memory-storage", "int8"])
    assert "--memory-storage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--file", str(doc), "--save-memory", str(mem), "--memory-storage", "int4"])
    assert "invalid choice" in capsys.readouterr().err
