"""Stable hashes of what a saved memory depends on: the model's weights, its tokenizer, a policy.

A memory (namm/memory_file.py) records them in its manifest; loading it under anything that
hashes differently is refused. Each is a sha256 hex digest, the same on every device and
process for the same thing (no object ids, no file paths, no timestamps).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

# Tensors up to this many elements are hashed whole; larger ones by this many evenly strided
# elements (with their shape). Training or fine-tuning changes nearly every element of a weight
# matrix, so a sample finds it; and hashing Llama 3 70B stays about a gigabyte of reads instead
# of 140. SmolLM2-135M: every matrix whole but the embedding; 0.3 s on one CPU core.
SAMPLE_ELEMENTS = 1 << 20

# The architecture settings that change what a model computes beyond its weights (RoPE above all).
# A curated list, not the whole config: a config also holds load-path details (the GGUF loader's
# and the converted copy's differ) that change nothing.
CONFIG_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
               "rms_norm_eps", "tie_word_embeddings", "rope_theta", "rope_parameters", "rope_scaling",
               "attention_bias", "mlp_bias", "hidden_act", "sliding_window")


def _update_tensor(h, t: torch.Tensor, sample: bool = True) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    flat = t.reshape(-1)
    if sample and flat.numel() > SAMPLE_ELEMENTS:
        stride = -(-flat.numel() // SAMPLE_ELEMENTS)
        flat = flat[::stride]
    raw = flat.contiguous().cpu().view(torch.uint8)  # any dtype (bf16 too) as its bytes
    h.update(memoryview(raw.numpy()))


def model_hash(model: torch.nn.Module) -> str:
    """sha256 over the architecture settings (CONFIG_KEYS) and every parameter's name, dtype,
    shape and bytes (sampled above SAMPLE_ELEMENTS elements). Tied weights count once."""
    h = hashlib.sha256()
    config = model.config.to_dict()
    h.update(json.dumps({k: config.get(k) for k in CONFIG_KEYS}, sort_keys=True, default=str).encode())
    for name, param in model.named_parameters():
        h.update(name.encode())
        _update_tensor(h, param)
    return h.hexdigest()


_PROBE = "Hello, world! 0123456789 \u00e9\u00e8 \u4e2d\u6587 <|im_end|> \t\n  def f(x): return x"


def tokenizer_hash(tokenizer) -> str:
    """sha256 over what decides how text becomes token ids: a fast tokenizer's whole definition
    (vocabulary, merges, normaliser, pre-tokeniser, added tokens; run-time truncation and padding
    left out), its special tokens and its chat template. A tokenizer without that definition is
    hashed by its vocabulary, or else (test stand-ins) by how it encodes a fixed probe text."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    elif hasattr(tokenizer, "get_vocab"):
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    else:
        h.update(type(tokenizer).__qualname__.encode())
        h.update(json.dumps(list(tokenizer.encode(_PROBE, add_special_tokens=False))).encode())
    specials = getattr(tokenizer, "special_tokens_map", None) or {}
    h.update(json.dumps(specials, sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(value, where: str):
    """A JSON-able stand-in for a policy setting; tensors and arrays become their digest."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # exact, and NaN-safe
    if isinstance(value, torch.Tensor):
        h = hashlib.sha256()
        _update_tensor(h, value, sample=False)
        return {"tensor": h.hexdigest()}
    if isinstance(value, np.ndarray):
        return _canonical(torch.from_numpy(np.ascontiguousarray(value)), where)
    if isinstance(value, dict):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v, where) for v in value), key=repr)
    if hasattr(value, "select") and hasattr(value, "memory_state"):  # a policy wrapping another
        return {"policy": policy_hash(value)}
    raise TypeError(f"cannot fingerprint policy setting {where} of type {type(value).__name__}; "
                    "teach namm.fingerprints.policy_hash about it")


def policy_hash(policy) -> str:
    """sha256 over a policy's class and every setting it holds (its attributes): the budget, the
    scorer's parameters, the normalisation, the surprisal views, window sizes, seeds. What a
    policy changes while reading (`Policy.memory_state`, e.g. a running normalisation or a random
    generator) is state, not a setting, and is left out: it is saved with the memory instead."""
    from .features import RunningNorm

    settings = {}
    for key, value in sorted(vars(policy).items()):
        if key == "weights" or isinstance(value, torch.Generator):
            continue  # weights: derived from params; a generator: state (memory_state)
        if isinstance(value, RunningNorm):
            value = value.state_dict() if value.frozen else "running"
        settings[key] = _canonical(value, key)
    text = json.dumps({"class": f"{type(policy).__module__}.{type(policy).__qualname__}", "name": policy.name,
                       "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
