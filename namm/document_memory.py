"""A document read once, answered many times: `read_document`, `ask`, `DocumentMemory`, `Manifest`.

`read_document` reads a document with a policy into a `DocumentMemory`: the KV cache as reading
left it (the tail compressed too), the policy's state, and what it was made under. `ask` answers
questions from it, each on its own copy (`NammCache.copy`), so asking never changes the memory
and the tenth question is answered exactly as the first would be. `namm.save_memory` /
`namm.load_memory` (namm/memory_file.py) keep it on disk between processes: answers from a
loaded memory are token-identical to answers from the one kept in the process.

`namm.generate` is `read_document` followed by `ask`, in one call.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from .decoding import Decoding
from .errors import ContextTooLongError, MemoryMismatchError
from .generate import GenerationResult, GenerationStats, Progress, _add_work, greedy_decode, prefill
from .memory import NammCache, static_capacity
from .models import LoadedModel
from .policies import Policy, make_policy
from .prompts import document_prompt, encode_text, question_prompt, stop_token_ids
from .spec import DEFAULT_POLICY, Budget, GenerationRequest

FORMAT = "namm-memory"
FORMAT_VERSION = 2  # 2: keys and values in a storage dtype (namm/memory_file.py); 1 still loads


@dataclass(frozen=True)
class Manifest:
    """What a memory was made under; a saved memory carries it as JSON (namm/memory_file.py).

    model: the model's name as namm.load_model reports it (informative: a copy of the same
      weights elsewhere has another name and is the same model).
    model_sha256: namm.fingerprints.model_hash of the weights and architecture settings.
    tokenizer_sha256: namm.fingerprints.tokenizer_hash.
    policy: the policy's name; policy_sha256: namm.fingerprints.policy_hash of its settings
      (budget, scorer parameters, normalisation, windows); checkpoint_sha256: the sha256 of the
      NAMM checkpoint file it was built from (None for the baselines).
    budget: the budget as `Budget.to_json()` ({"fraction": 0.28}), None for none.
    n_up: the update interval it was read with (questions keep it).
    tokens: tokens read (the prompt's document part).
    dtype: of the keys and values ("float32", "bfloat16"), as the model computes them.
    storage: the dtype the keys and values were held in: the model's dtype (exact) for a memory
      read in this process, the file's for a saved or loaded one ("float16", "bfloat16", "int8":
      rounded; namm/memory_file.py). Informative: not checked (a loaded memory is in `dtype`).
    positions: "original" or "reindexed" (namm/memory.py).
    layers, kv_heads, head_dim: the cache's shape.
    format, format_version: FORMAT and FORMAT_VERSION of the writer; created: when (UTC, ISO 8601).
    """

    model: str
    model_sha256: str
    tokenizer_sha256: str
    policy: str
    policy_sha256: str
    checkpoint_sha256: str | None
    budget: dict | None
    n_up: int
    tokens: int
    dtype: str
    positions: str
    layers: int
    kv_heads: int
    head_dim: int
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    created: str = ""
    storage: str = ""  # "" in version-1 files: the model's dtype

    # what must be equal for a memory to be usable, with the words a mismatch is reported in
    CHECKED = (("format", "format"), ("format_version", "format version"), ("model_sha256", "model weights"),
               ("tokenizer_sha256", "tokenizer"), ("dtype", "dtype"), ("policy", "policy"),
               ("checkpoint_sha256", "policy checkpoint"), ("budget", "budget"),
               ("policy_sha256", "policy settings"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: "Manifest") -> list[str]:
        """One line per checked field that differs: what this memory has, then what `other` has."""
        out = []
        for name, words in self.CHECKED:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if name == "model_sha256":
                    mine, theirs = f"{self.model} ({str(mine)[:12]})", f"{other.model} ({str(theirs)[:12]})"
                elif name.endswith("sha256") and mine and theirs:
                    mine, theirs = str(mine)[:12], str(theirs)[:12]
                out.append(f"{words}: saved {mine}, here {theirs}")
        return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe(lm: LoadedModel, policy: Policy, n_up: int, tokens: int, positions: str) -> Manifest:
    """The manifest of a memory of `tokens` tokens read by `policy` on `lm`."""
    from .fingerprints import policy_hash

    config = lm.model.config.get_text_config(decoder=True)
    budget = Budget.coerce(policy.budget)
    dtype = _dtype_name(next(lm.model.parameters()).dtype)
    return Manifest(
        model=lm.name, model_sha256=lm.weights_sha256, tokenizer_sha256=lm.tokenizer_sha256,
        policy=policy.name, policy_sha256=policy_hash(policy),
        checkpoint_sha256=getattr(policy, "checkpoint_sha256", None),
        budget=None if budget is None else budget.to_json(), n_up=n_up, tokens=tokens,
        dtype=dtype, storage=dtype, positions=positions,
        layers=config.num_hidden_layers, kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


@dataclass
class DocumentMemory:
    """A document read (and compressed) by a policy, ready for questions.

    cache: the KV cache as reading left it, after the final update. Never asked on: every
      question gets its own copy (`fork`).
    lm: the model it was read with (or loaded under).
    positions: "original" or "reindexed".
    policy_state: the policy's `memory_state()` after reading, put back before each question.
    manifest: what it was made under; built on first use for a memory read in this process
      (hashing the weights once per model), read from the file for a loaded one.
    """

    cache: NammCache
    lm: LoadedModel
    positions: str = "original"
    policy_state: dict[str, torch.Tensor] = field(default_factory=dict)
    _manifest: Manifest | None = None

    @property
    def policy(self) -> Policy:
        return self.cache.policy

    @property
    def tokens(self) -> int:
        """Tokens read."""
        return self.cache.tokens_read()

    @property
    def kv_bytes(self) -> int:
        """Bytes of the cache slots in use (keys and values); `full_kv_bytes` for a full cache."""
        return self.cache.used_bytes

    @property
    def full_kv_bytes(self) -> int:
        return self.cache.full_cache_bytes()

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = describe(self.lm, self.policy, self.cache.n_up, self.tokens, self.positions)
        return self._manifest

    def fork(self) -> NammCache:
        """A cache to answer one question on: a copy of the memory, with the policy's state put
        back as it was after reading."""
        self.policy.load_memory_state(self.policy_state)
        return self.cache.copy()

    def _spend(self) -> NammCache:
        """The memory's own cache, for the last question of a caller that drops the memory
        afterwards (no copy; the memory must not be asked again)."""
        self.policy.load_memory_state(self.policy_state)
        cache, self.cache = self.cache, None
        return cache

    def save(self, path: str | Path) -> Path:
        """namm.save_memory(self, path)."""
        from .memory_file import save_memory

        return save_memory(self, path)


def _positions(positions: str, evicts: bool, tokens: int, max_context: int) -> str:
    if positions not in ("auto", "original", "reindexed"):
        raise ValueError(f"positions must be auto, original or reindexed, got {positions!r}")
    if evicts and (positions == "reindexed" or (positions == "auto" and tokens > max_context)):
        return "reindexed"
    return "original"


@torch.no_grad()
def _read_ids(lm: LoadedModel, ids: torch.Tensor, policy: Policy, n_up: int, positions: str,
              progress: Progress | None = None) -> DocumentMemory:
    rope = lm.model.model.rotary_emb.inv_freq if positions == "reindexed" else None
    cache = NammCache(lm.model.config, policy, n_up=n_up, rope_inv_freq=rope,
                      capacity=static_capacity(policy, ids.shape[1], n_up))
    prefill(lm, cache, ids, progress)
    cache.flush()  # the document is read: compress its tail before any question arrives
    state = {k: v.clone() for k, v in policy.memory_state().items()}
    return DocumentMemory(cache=cache, lm=lm, positions=positions, policy_state=state)


def read_document(lm: LoadedModel, document: str, *, policy: str | Policy = DEFAULT_POLICY,
                  budget: Budget | float | int | None = None, n_up: int = 512, positions: str = "original",
                  progress: Progress | None = None) -> DocumentMemory:
    """Read `document` once with `policy` and `budget` (as `namm.generate` takes them) into a
    memory that `ask` answers from and `save_memory` saves.

    The memory is query-agnostic: it is the prompt's document part, the same for every question.
    `positions`: as in `namm.generate`; "auto" re-indexes when an evicting policy reads more
    tokens than the model's context. A non-evicting policy (full) raises ContextTooLongError for a
    document longer than the model's context."""
    request = GenerationRequest(context=document, policy=policy, budget=budget, n_up=n_up)
    pol = make_policy(request.policy, request.budget, model_name=lm.name)
    ids = encode_text(lm.tokenizer, document_prompt(lm.tokenizer, request.context))
    if not pol.evicts and ids.shape[1] >= lm.max_context:
        raise ContextTooLongError(
            f"the document has {ids.shape[1]} tokens but {lm.name} has a {lm.max_context}-token context and the "
            f"'{pol.name}' policy does not bound the cache; use a memory policy (e.g. surprisal)")
    where = _positions(positions, pol.evicts, ids.shape[1], lm.max_context)
    return _read_ids(lm, ids, pol, request.n_up, where, progress)


def _note_cache(stats: GenerationStats, cache: NammCache) -> None:
    """Fold a cache's peaks and counted work into `stats`."""
    stats.kv_bytes_peak = max(stats.kv_bytes_peak, cache.peak_used_bytes)
    stats.kv_bytes_full_peak = max(stats.kv_bytes_full_peak, cache.full_cache_bytes())
    stats.kv_bytes_allocated_peak = max(stats.kv_bytes_allocated_peak, cache.peak_bytes)
    _add_work(stats, cache.take_work())


def _answer(lm: LoadedModel, cache: NammCache, q_ids: torch.Tensor, max_new_tokens: int, stop: set[int],
            decoding: Decoding | None, stats: GenerationStats, first: bool) -> str:
    """Read one question into `cache` and decode its answer greedily; `stats` gets the figures."""
    t0 = time.perf_counter()
    logits = prefill(lm, cache, q_ids)
    stats.seconds_prefill += time.perf_counter() - t0
    stats.tokens_in += q_ids.shape[1]
    if first:  # memory at answer time, for the first question
        stats.kv_kept_per_layer = cache.kept_per_layer()
        stats.kv_kept_fraction = cache.kept_fraction()
    t0 = time.perf_counter()
    out_ids = greedy_decode(lm, cache, logits, max_new_tokens, stop, decoding)
    stats.seconds_decode += time.perf_counter() - t0
    stats.tokens_out += len(out_ids)
    _note_cache(stats, cache)
    return lm.tokenizer.decode(out_ids, skip_special_tokens=True).strip()


def _check_model(lm: LoadedModel, memory: DocumentMemory) -> None:
    if memory.cache is None:
        raise ValueError("this memory was handed to a single question and cannot be asked again")
    if memory.lm is lm:
        return
    here = replace(describe(lm, memory.policy, memory.cache.n_up, memory.tokens, memory.positions),
                   format_version=memory.manifest.format_version)  # a memory loaded from an older file
    diffs = memory.manifest.differences(here)
    if diffs:
        raise MemoryMismatchError("the memory was read under another model: " + "; ".join(diffs))


def ask(lm: LoadedModel, memory: DocumentMemory, questions: str | Sequence[str] | None = None, *,
        instruction: str | None = None, max_new_tokens: int = 128,
        decoding: Decoding | None = None) -> GenerationResult:
    """Answer each question from `memory`, each on its own copy: the memory is left as it was.

    Without questions the instruction (or the default summary instruction) is asked, as in
    `namm.generate`. The result's figures count the questions only (the document was read
    before): tokens_in is the questions' tokens; the KV figures are those of the memory plus
    each question and answer."""
    # validated as generate's are (the document is in the memory: a stand-in fills its place)
    request = GenerationRequest(context="(a document memory)", questions=questions or (), instruction=instruction,
                                max_new_tokens=max_new_tokens)
    questions, instruction = request.prompts()
    _check_model(lm, memory)
    started = time.perf_counter()
    tok = lm.tokenizer
    stats = GenerationStats()
    stop = stop_token_ids(tok)
    answers = []
    for i, question in enumerate(questions):
        q_ids = encode_text(tok, question_prompt(tok, question, instruction))
        if not memory.policy.evicts and memory.tokens + q_ids.shape[1] + request.max_new_tokens > lm.max_context:
            raise ContextTooLongError(
                f"the memory holds {memory.tokens} tokens; with the question ({q_ids.shape[1]}) and "
                f"max_new_tokens {request.max_new_tokens} that passes {lm.name}'s {lm.max_context}-token context")
        answers.append(_answer(lm, memory.fork(), q_ids, request.max_new_tokens, stop, decoding, stats, first=i == 0))
    stats.seconds = time.perf_counter() - started
    return GenerationResult(answers=answers, policy=memory.policy.name, budget=memory.policy.budget, stats=stats)


__all__ = ["DocumentMemory", "Manifest", "read_document", "ask", "describe", "FORMAT", "FORMAT_VERSION"]
