"""namm: Neural Attention Memory Models for Hugging Face causal LMs.

A learned memory that forgets the KV-cache tokens that do not matter, plus the classic baselines
behind the same interface. Usable as a library on its own (no service code here).
"""
from .errors import ContextTooLongError, EmptyInputError, ModelLoadError, NammError, UnknownPolicyError
from .generate import GenerationResult, GenerationStats, continuation_logits, generate, prefill
from .memory import NammCache
from .models import LoadedModel, load_model
from .policies import available_policies, make_policy

__all__ = [
    "load_model", "LoadedModel", "generate", "prefill", "continuation_logits", "GenerationResult",
    "GenerationStats", "NammCache", "make_policy", "available_policies", "NammError", "ModelLoadError",
    "UnknownPolicyError", "ContextTooLongError", "EmptyInputError",
]
