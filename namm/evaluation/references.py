"""Full-cache reference answers, cached per (model, prompt, answer length, protocol)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from namm.tasks import Sample


@dataclass
class _Reference:
    prediction: str
    score: float
    kept_fraction: float | None
    kv_bytes_peak: int | None
    kv_bytes_full_peak: int | None
    tokens_in: int | None
    seconds: float
    log_probs: object = None  # lm_fidelity: full-cache log-probs [T, V] (float16, memory only)


class ReferenceCache:
    """Full-cache results per (model, prompt, decoding settings), so that evaluating many
    policies (or many CMA-ES candidates) runs the full cache once per sample.

    With a ``path`` the text results are also kept in a JSON file across processes; the
    language-model log-probabilities (megabytes per sample) stay in memory only.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._items: dict[str, _Reference] = {}
        if self.path and self.path.exists():
            for key, value in json.loads(self.path.read_text()).items():
                self._items[key] = _Reference(**value)

    def get(self, key: str) -> _Reference | None:
        return self._items.get(key)

    def put(self, key: str, ref: _Reference) -> None:
        self._items[key] = ref
        if self.path and ref.log_probs is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {k: {**asdict(v), "log_probs": None} for k, v in self._items.items() if v.log_probs is None}
            self.path.write_text(json.dumps(data))

    def __len__(self) -> int:
        return len(self._items)


_DEFAULT_REFERENCES = ReferenceCache()


def reference_model_name(lm) -> str:
    """The model a full-cache result belongs to: its name, and its dtype when that is not float32
    (the same weights in bfloat16 answer differently, under the same name)."""
    name = getattr(lm, "name", "model")
    model = getattr(lm, "model", None)
    dtype = str(getattr(model, "dtype", "torch.float32")).removeprefix("torch.")
    return name if dtype == "float32" else f"{name}@{dtype}"


def reference_key(model_name: str, sample: Sample, max_new_tokens: int, query_aware: bool, n_up: int) -> str:
    blob = json.dumps([model_name, sample.context, sample.question, sample.answer, sample.metric,
                       max_new_tokens, query_aware, n_up])
    return hashlib.sha256(blob.encode()).hexdigest()
