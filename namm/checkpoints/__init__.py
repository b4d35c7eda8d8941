"""Shipped NAMM weights. `default_checkpoint(model_name)` finds the one trained for a model."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
# model name (as namm.load_model reports it) -> checkpoint file in this folder
SHIPPED = {"SmolLM2-135M-Instruct": "smollm2-135m.pt"}


def default_checkpoint(model_name: str | None) -> Path | None:
    # NAMMs read only attention values, so they transfer zero-shot to other transformers
    # (the paper's finding): without a model-specific file, use the default model's.
    name = SHIPPED.get(model_name or "", SHIPPED["SmolLM2-135M-Instruct"])
    path = HERE / name
    return path if path.exists() else None
