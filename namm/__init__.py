"""namm: Neural Attention Memory Models for Hugging Face causal LMs.

A learned memory that forgets the KV-cache tokens that do not matter, plus the classic baselines
behind the same interface. Usable as a library on its own (no service code here).

`import namm` is cheap: the contract (namm.spec) and the errors load at once, everything that
needs torch (the model, the cache, generate) on first use. A service's API process can so read
the contract without ever importing torch.
"""
import importlib
import sys
import types

from .errors import (BudgetError, ContextTooLongError, CorruptMemoryError, EmptyInputError, InputError,
                     MemoryMismatchError, ModelLoadError, NammError, NoTrainedScorerError, RequestError,
                     SavedMemoryError, UnknownPolicyError)
from .spec import DEFAULT_POLICY, POLICY_NAMES, Budget, GenerationRequest

_LAZY = {
    "generate": ".generate", "generate_batch": ".batch", "prefill": ".generate", "continuation_logits": ".generate",
    "GenerationResult": ".generate", "GenerationStats": ".generate",
    "NammCache": ".memory",
    "read_document": ".document_memory", "ask": ".document_memory", "DocumentMemory": ".document_memory",
    "Manifest": ".document_memory",
    "save_memory": ".memory_file", "load_memory": ".memory_file", "read_manifest": ".memory_file",
    "load_model": ".models", "LoadedModel": ".models",
    "make_policy": ".policies", "available_policies": ".policies",
    "retention_map": ".retention", "read_retention": ".retention", "document_retention": ".retention",
    "render_html": ".retention", "RetentionMap": ".retention",
}

__all__ = [
    "load_model", "LoadedModel", "generate", "generate_batch", "prefill", "continuation_logits", "GenerationResult",
    "GenerationStats", "NammCache", "read_document", "ask", "DocumentMemory", "Manifest", "save_memory",
    "load_memory", "read_manifest", "make_policy", "available_policies", "Budget", "GenerationRequest",
    "POLICY_NAMES", "NammError", "InputError", "ModelLoadError", "UnknownPolicyError", "BudgetError",
    "ContextTooLongError", "EmptyInputError", "RequestError", "SavedMemoryError", "MemoryMismatchError",
    "CorruptMemoryError", "NoTrainedScorerError", "DEFAULT_POLICY", "retention_map", "read_retention",
    "document_retention", "render_html", "RetentionMap",
]


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'namm' has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        object.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # Importing the submodule namm.generate binds it as the package attribute `generate`;
        # `namm.generate` is the function (as it always was), so that binding is skipped. The
        # submodule stays importable: `from namm.generate import prefill`.
        if name == "generate" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
