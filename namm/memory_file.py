"""A document memory on disk: one safetensors file, written atomically, loaded without running code.

Layout (format version 2). Tensors, each as the cache holds it (slots in use only):
  layers.<i>.keys / .values      [B, H_kv, length, D]  the kept keys (post-RoPE) and values, in the
                                 file's storage dtype (below)
  layers.<i>.keys_scale / .values_scale  [B, H_kv, 1, D] float32: int8 storage only, the scale of
                                 each (batch row, KV head, channel of the head dim)
  layers.<i>.valid               [B, H_kv, length]     bool: False for the padding of ragged heads
  layers.<i>.positions           [B, H_kv, length]     int64: each slot's RoPE position in the text
  layers.<i>.rope_pos            [length]              re-indexed positions only
  layers.<i>.state.<name>        [B, H_kv, <=length, ...] the policy's per-slot state (NAMM's EMA)
  layers.<i>.pending.<j>         queries awaiting an update (none after reading, kept if any)
  <signal>.<key>                 the record of each signal the policy reads (namm/signals.py):
                                 surprisal.values / .ids / .last_logits for the surprisal
  policy.<name>                  the policy's `memory_state()` (a running norm, a generator)
and in the header's metadata (strings, as safetensors keeps them):
  format        "namm-memory"      format_version  "2"
  manifest      namm.Manifest as JSON: model and tokenizer hashes, policy, budget, n_up, storage, ...
  layout        JSON: per layer its counters (length, seen, since_update, ...) and storage capacity;
                "storage", as in the manifest
  sha256        over the manifest, the layout and every tensor's name, dtype, shape and bytes

Storage (`save_memory(..., storage=)`): only the keys and values are compacted; positions,
validity masks, counters, policy state and the surprisal record are kept exactly.
  "float32", "float16", "bfloat16"  keys and values cast to that dtype (the model's own dtype is
                                 exact; a narrower one rounds to nearest)
  "int8"                         symmetric per-channel quantisation: for each layer, batch row,
                                 KV head and channel d of the head dim, scale = max |x| over the
                                 slots / 127 and q = round(x / scale) in [-127, 127]; each
                                 element comes back within scale / 2 of what was saved
Loading turns them back into the model's dtype. The manifest's `storage` says which one a file
(and a memory loaded from it) used. Version-1 files (before storage existed: keys and values in
the model's dtype) still load, as storage = their dtype.

safetensors holds tensors as raw bytes behind a JSON header: loading never unpickles, so a
memory file cannot run code. safetensors itself refuses a file whose header and size disagree
(truncated); the sha256 finds any altered byte.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .document_memory import FORMAT, FORMAT_VERSION, DocumentMemory, Manifest, describe
from .errors import CorruptMemoryError, MemoryMismatchError
from .fingerprints import _update_tensor
from .memory import NammCache
from .models import LoadedModel
from .policies import Policy, make_policy
from .spec import Budget, policy_name

# the storage dtypes of keys and values (module docstring). The default for a float32 model:
# measured by bench/memory_storage.py (docs/memories.md, "Compact storage"); a model already in
# a 16-bit dtype stores its own dtype (exact at the same size), see `_default_storage`
STORAGES = ("float32", "float16", "bfloat16", "int8")
DEFAULT_STORAGE = "float16"  # 14.8% of the full cache, the same held-out score as float32
READS_VERSIONS = (1, FORMAT_VERSION)
_FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_STORED = {**_FLOATS, "int8": torch.int8}
INT8_MAX = 127

_LAYER_FIELDS = ("length", "seen", "since_update", "n_invalid", "scale", "slot_bytes", "valid_count", "is_initialized")


def _checksum(manifest: str, layout: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(manifest.encode())
    h.update(b"\0")
    h.update(layout.encode())
    for name in sorted(tensors):
        h.update(b"\0" + name.encode() + b"\0")
        _update_tensor(h, tensors[name], sample=False)
    return h.hexdigest()


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of `x` [B, H, L, D] per (batch row, head, channel of D): the
    scale [B, H, 1, D] (float32) is max |x| over the L slots / 127 (1 for an all-zero channel,
    which then stores zeros), q = round(x / scale) clamped to [-127, 127]. Every element of
    `dequantize_int8(q, scale)` is within scale / 2 of x (rounding in float32 aside)."""
    if x.dim() != 4:
        raise ValueError(f"expected [B, H, L, D], got shape {tuple(x.shape)}")
    xf = x.detach().float()
    if xf.shape[2] == 0:
        amax = xf.new_zeros((*xf.shape[:2], 1, xf.shape[3]))
    else:
        amax = xf.abs().amax(dim=2, keepdim=True)
    if not bool(torch.isfinite(amax).all()):
        raise ValueError("cannot store non-finite keys or values as int8")
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(xf / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * scale (in float32), as `dtype`."""
    return (q.float() * scale.float()).to(dtype)


def _check_storage(storage: str) -> str:
    name = str(storage).strip().lower().removeprefix("torch.")
    if name not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    return name


def _default_storage(memory: DocumentMemory) -> str:
    """The storage `save_memory` uses when none is named: DEFAULT_STORAGE, or the model's own dtype
    where that is no wider (a bfloat16 model stores bfloat16, exactly: float16 would only round)."""
    dtype = getattr(torch, memory.manifest.dtype, None)
    default = _STORED[DEFAULT_STORAGE]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype.itemsize <= default.itemsize \
            and memory.manifest.dtype in _FLOATS:
        return memory.manifest.dtype
    return DEFAULT_STORAGE


def _compact(name: str, t: torch.Tensor, storage: str, tensors: dict[str, torch.Tensor]) -> None:
    """Put keys or values `t` under `name` in `storage` (and its scale, for int8)."""
    if storage == "int8":
        q, scale = quantize_int8(t)
        tensors[name], tensors[f"{name}_scale"] = q, scale
        return
    dtype = _FLOATS[storage]
    out = t.to(dtype)
    if dtype.itemsize < t.dtype.itemsize and not bool(torch.isfinite(out).all()) and bool(torch.isfinite(t).all()):
        raise ValueError(f"keys or values overflow {storage} (|x| up to {float(t.abs().max()):.3g}); "
                         f"store them as bfloat16 or int8")
    tensors[name] = out


def _flatten(memory: DocumentMemory, storage: str = "float32") -> tuple[dict[str, torch.Tensor], dict]:
    """The memory's tensors (CPU, contiguous, slots in use only; keys and values in `storage`)
    and its layout."""
    cache = memory.cache
    tensors: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> None:
        tensors[name] = t.detach().to("cpu").contiguous()

    layers = []
    for i, layer in enumerate(cache.layers):
        entry = {k: getattr(layer, k) for k in _LAYER_FIELDS}
        entry["capacity"] = 0 if layer.keys is None else layer.keys.shape[2]
        entry["pending"] = len(layer.pending_queries)
        layers.append(entry)
        if layer.keys is None:
            continue
        n = layer.length
        for name in ("keys", "values"):
            _compact(f"layers.{i}.{name}", getattr(layer, name)[:, :, :n].detach().to("cpu").contiguous(), storage,
                     tensors)
        put(f"layers.{i}.valid", layer.valid[:, :, :n])
        put(f"layers.{i}.positions", layer.positions[:, :, :n])
        if layer.rope_pos is not None:
            put(f"layers.{i}.rope_pos", layer.rope_pos)
        for name, t in layer.state.items():
            put(f"layers.{i}.state.{name}", t)
        for j, q in enumerate(layer.pending_queries):
            put(f"layers.{i}.pending.{j}", q)
    for signal in cache.signals:
        for name, t in signal.state().items():
            put(f"{signal.name}.{name}", t)
    for name, t in memory.policy_state.items():
        put(f"policy.{name}", t)
    return tensors, {"layers": layers, "rope_base": cache.rope_base, "storage": storage,
                     "static_capacity": cache.capacity}


def save_memory(memory: DocumentMemory, path: str | Path, storage: str | None = None) -> Path:
    """Write `memory` to `path` (one safetensors file, see the module docstring), atomically: a
    temporary file beside it, flushed to disk, then renamed over `path`. A reader sees the old
    file or the new one, never half of one. Returns the path.

    `storage`: the dtype the keys and values are stored in: "float32", "float16", "bfloat16" or
    "int8" (per-channel, module docstring). The model's own dtype is exact; the others are
    smaller and round (docs/memories.md measures what that costs). None: DEFAULT_STORAGE, or
    the model's own dtype where that is no wider; should the default be float16 and a value
    overflow it, bfloat16 (the same size, float32's range) instead, as the manifest then says.
    A storage named explicitly is used or refused (ValueError), never replaced."""
    path = Path(path)
    if storage is None:
        storage = _default_storage(memory)
        try:
            tensors, layout = _flatten(memory, storage)
        except ValueError:
            if storage != "float16":
                raise
            storage = "bfloat16"
            tensors, layout = _flatten(memory, storage)
    else:
        storage = _check_storage(storage)
        tensors, layout = _flatten(memory, storage)
    manifest = replace(memory.manifest, storage=storage, format=FORMAT, format_version=FORMAT_VERSION)
    manifest_text, layout_text = manifest.to_json(), json.dumps(layout, sort_keys=True)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "manifest": manifest_text,
                "layout": layout_text, "sha256": _checksum(manifest_text, layout_text, tensors)}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a crash once the folder is on disk
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # a folder that cannot be opened or synced (some platforms): the file is written
    return path


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a saved memory, read from the header alone (no tensor is read, nothing is
    verified beyond the format: `load_memory` checks the rest)."""
    metadata, _ = _open(path, tensors=False)
    return _manifest(metadata, path)


def _open(path: str | Path, tensors: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no memory file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CorruptMemoryError(f"{path} is not a namm memory (no '{FORMAT}' header)")
            _check_version(metadata, path)
            loaded = {name: f.get_tensor(name) for name in f.keys()} if tensors else {}
    except SafetensorError as exc:
        raise CorruptMemoryError(f"{path} is not a whole safetensors file (truncated or damaged): {exc}") from exc
    return metadata, loaded


def _check_version(metadata: dict[str, str], path) -> None:
    version = metadata.get("format_version")
    if version not in {str(v) for v in READS_VERSIONS}:
        raise MemoryMismatchError(f"{path}: memory format version {version}, this namm reads versions "
                                  f"{' and '.join(map(str, READS_VERSIONS))}; rebuild the memory from its document")


def _manifest(metadata: dict[str, str], path) -> Manifest:
    try:
        manifest = Manifest.from_json(metadata["manifest"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptMemoryError(f"{path}: unreadable manifest ({exc})") from exc
    if not manifest.storage:  # version 1: keys and values in the model's dtype
        manifest = replace(manifest, storage=manifest.dtype)
    return manifest


def _policy_for(lm: LoadedModel, manifest: Manifest, policy: str | Policy | None) -> Policy:
    """The policy the memory goes on with: the caller's, or the one its manifest names."""
    if isinstance(policy, Policy):
        return policy
    name = manifest.policy if policy is None else policy_name(policy)
    if name != manifest.policy:
        raise MemoryMismatchError(f"the memory was read with policy {manifest.policy!r}, not {name!r}")
    budget = Budget.parse(manifest.budget)
    return make_policy(name, None if budget is None else budget.number, model_name=lm.name)


def load_memory(lm: LoadedModel, path: str | Path, *, policy: str | Policy | None = None) -> DocumentMemory:
    """A memory saved by `save_memory`, ready for `namm.ask` on `lm`.

    `policy`: None builds the one the manifest names (name and budget, the shipped checkpoint
    for namm); a name must be that one; a Policy object (a NAMM with other weights, say) must
    hash the same as the one the memory was read with.
    Raises FileNotFoundError for a missing file, CorruptMemoryError for a damaged one
    (truncated, altered, not a memory), MemoryMismatchError when the model, tokenizer, dtype,
    policy (name, checkpoint, budget, settings) or format version differs from the saved one;
    the message names every difference. Nothing in the file is executed."""
    metadata, tensors = _open(path)
    manifest_text, layout_text = metadata.get("manifest", ""), metadata.get("layout", "")
    if metadata.get("sha256") != _checksum(manifest_text, layout_text, tensors):
        raise CorruptMemoryError(f"{path}: checksum mismatch, the file was altered or damaged")
    manifest = _manifest(metadata, path)
    pol = _policy_for(lm, manifest, policy)
    # an older format this namm still reads is no difference
    here = replace(describe(lm, pol, manifest.n_up, manifest.tokens, manifest.positions),
                   format_version=manifest.format_version)
    diffs = manifest.differences(here)
    if diffs:
        raise MemoryMismatchError(f"memory {path} cannot be used here: " + "; ".join(diffs))
    try:
        memory = _build(lm, pol, manifest, json.loads(layout_text), tensors)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise CorruptMemoryError(f"{path}: inconsistent memory ({type(exc).__name__}: {exc})") from exc
    memory._manifest = manifest
    return memory


def _layer_devices(lm: LoadedModel, n: int) -> list[torch.device]:
    """Where each layer's keys live: its decoder layer's device (a model split over GPUs)."""
    blocks = getattr(getattr(lm.model, "model", None), "layers", None)
    if blocks is None or len(blocks) != n:
        return [lm.device] * n
    return [next(block.parameters()).device for block in blocks]


def _expand(tensors: dict[str, torch.Tensor], name: str, storage: str, dtype: torch.dtype) -> torch.Tensor:
    """Stored keys or values back in the model's dtype."""
    t = tensors[name]
    if t.dtype != _STORED[storage]:
        raise ValueError(f"{name} is {t.dtype}, the storage says {storage}")
    if storage != "int8":
        return t.to(dtype)
    scale = tensors[f"{name}_scale"]
    if scale.dtype != torch.float32 or scale.shape != (*t.shape[:2], 1, t.shape[3]):
        raise ValueError(f"{name}_scale: {scale.dtype} {tuple(scale.shape)} for {tuple(t.shape)} int8 values")
    return dequantize_int8(t, scale, dtype)


def _build(lm: LoadedModel, policy: Policy, manifest: Manifest, layout: dict,
           tensors: dict[str, torch.Tensor]) -> DocumentMemory:
    reindexed = manifest.positions == "reindexed"
    storage = layout.get("storage", manifest.dtype)  # version 1: the model's dtype
    if storage != manifest.storage or storage not in _STORED:
        raise ValueError(f"storage {storage!r} in the layout, {manifest.storage!r} in the manifest")
    model_dtype = getattr(torch, manifest.dtype)
    rope = lm.model.model.rotary_emb.inv_freq if reindexed else None
    cache = NammCache(lm.model.config, policy, n_up=manifest.n_up, rope_inv_freq=rope,
                      capacity=layout.get("static_capacity"))  # compacts as the reading process did
    if len(layout["layers"]) != len(cache.layers):
        raise ValueError(f"{len(layout['layers'])} layers saved, the model has {len(cache.layers)}")
    for i, (layer, entry, device) in enumerate(zip(cache.layers, layout["layers"],
                                                   _layer_devices(lm, len(cache.layers)))):
        snap = {k: entry[k] for k in _LAYER_FIELDS}
        snap.update(keys=None, values=None, valid=None, positions=None, rope_pos=None, pending=[], state={})
        if entry["is_initialized"]:
            n, cap = entry["length"], entry["capacity"]
            keys, values = (_expand(tensors, f"layers.{i}.{name}", storage, model_dtype) for name in ("keys", "values"))
            if keys.shape[2] != n or cap < n:
                raise ValueError(f"layer {i}: {keys.shape[2]} slots saved, the layout says {n} (capacity {cap})")
            b, h, _, d = keys.shape
            # the storage shape the cache had in the process that read the document: attention
            # over a slice of it computes exactly what it computed there
            snap["keys"] = torch.empty((b, h, cap, d), dtype=model_dtype, device=device)
            snap["values"] = torch.empty((b, h, cap, values.shape[-1]), dtype=model_dtype, device=device)
            snap["valid"] = torch.zeros((b, h, cap), dtype=torch.bool, device=device)
            snap["positions"] = torch.zeros((b, h, cap), dtype=torch.long, device=device)
            snap["keys"][:, :, :n], snap["values"][:, :, :n] = keys, values
            for name in ("valid", "positions"):
                snap[name][:, :, :n] = tensors[f"layers.{i}.{name}"]
            if f"layers.{i}.rope_pos" in tensors:
                snap["rope_pos"] = tensors[f"layers.{i}.rope_pos"].to(device)
            prefix = f"layers.{i}.state."
            snap["state"] = {k[len(prefix):]: t.to(device) for k, t in tensors.items() if k.startswith(prefix)}
            snap["pending"] = [tensors[f"layers.{i}.pending.{j}"].to(device) for j in range(entry["pending"])]
        layer.load(snap, clone=False)
    cache.rope_base = layout.get("rope_base", 0)
    if cache.tokens_read() != manifest.tokens:
        raise ValueError(f"the layers read {cache.tokens_read()} tokens, the manifest says {manifest.tokens}")
    out = lm.model.get_output_embeddings()
    log_device = out.weight.device if out is not None else lm.device
    for signal in cache.signals:
        prefix = f"{signal.name}."
        signal.load_state({k.removeprefix(prefix): t.to(log_device) for k, t in tensors.items() if k.startswith(prefix)})
    policy_state = {k.removeprefix("policy."): t for k, t in tensors.items() if k.startswith("policy.")}
    return DocumentMemory(cache=cache, lm=lm, positions=manifest.positions, policy_state=policy_state)


__all__ = ["save_memory", "load_memory", "read_manifest", "STORAGES", "DEFAULT_STORAGE", "quantize_int8",
           "dequantize_int8"]
