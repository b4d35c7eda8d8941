"""Chunked prefill and greedy decoding with a forgetting KV cache; returns text and memory statistics.

The document is read in chunks aligned to the update interval, so the memory evicts while it
reads; once it is read, one more update compresses the tail. The compressed context is then
reused for every question (each on its own copy, never re-prefilled): `generate` is
`namm.read_document` followed by `namm.ask` (namm/document_memory.py) in one call.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from .decoding import DEFAULT_DECODING, Decoding, answer_cut, next_token, token_words
from .errors import ContextTooLongError
from .memory import NammCache
from .models import LoadedModel
from .policies import Policy, make_policy
from .prompts import encode_text, split_prompt, stop_token_ids
from .spec import DEFAULT_POLICY, Budget, GenerationRequest

Progress = Callable[[int, int], None]


@dataclass
class GenerationStats:
    """What one generation read, wrote, held and spent (exact counts from `NammCache`).

    kv_bytes_peak: peak bytes of the cache slots in use (ragged-head padding included,
      allocation headroom not); kv_bytes_full_peak: what a full cache holds for every token
      read, the same measure, so the `full` policy has kv_bytes_peak == kv_bytes_full_peak;
      kv_bytes_allocated_peak: peak storage allocated, headroom included (up to 64 slots per
      layer beyond the slots in use).
    kv_token_steps: for every token read (document, question, and each decoded token fed
      back), the KV entries it attended to, itself included, averaged over layers and KV heads;
      kv_token_steps_full: the same for a full cache over the same tokens. The attention work of
      the run and of the full cache, exactly, in token units.
    kv_updates: one row per policy update round, [tokens read, entries before, entries after]
      (entries per layer and KV head, averaged).
    query_aware: the document was read with the question shown first (tokens_in counts it).
    """

    tokens_in: int = 0
    tokens_out: int = 0
    kv_kept_per_layer: list[float] = field(default_factory=list)
    kv_kept_fraction: float = 1.0
    kv_bytes_peak: int = 0
    kv_bytes_full_peak: int = 0
    kv_bytes_allocated_peak: int = 0
    kv_token_steps: float = 0.0
    kv_token_steps_full: float = 0.0
    kv_updates: list[list[float]] = field(default_factory=list)
    seconds_prefill: float = 0.0
    seconds_decode: float = 0.0
    seconds_policy: float = 0.0
    seconds: float = 0.0
    truncated: bool = False
    policy_updates: int = 0
    query_aware: bool = False


@dataclass
class GenerationResult:
    answers: list[str]
    policy: str
    budget: float | int | None
    stats: GenerationStats

    @property
    def text(self) -> str:
        return self.answers[0] if len(self.answers) == 1 else "\n\n".join(self.answers)

    def to_dict(self) -> dict:
        return {"text": self.text, "answers": self.answers, "policy": self.policy, "budget": self.budget,
                **asdict(self.stats)}


@torch.no_grad()
def prefill(lm: LoadedModel, cache: NammCache, input_ids: torch.Tensor,
            progress: Progress | None = None) -> torch.Tensor:
    """Feed `input_ids` [B, T] in chunks that end on update boundaries (`NammCache.next_chunk`);
    return the last logits [B, V]."""
    ids = input_ids.to(lm.device)
    n = ids.shape[1]
    pos, logits = 0, None
    while pos < n:
        chunk = ids[:, pos: pos + cache.next_chunk()]  # ends exactly where the next update is due
        # a policy weighing surprisal needs every position's logits (the LM head over the chunk)
        keep = 0 if cache.wants_logits else 1
        out = lm.model(input_ids=chunk, past_key_values=cache, use_cache=True, logits_to_keep=keep)
        cache.after_forward(chunk, out.logits)
        logits = out.logits[:, -1]
        pos += chunk.shape[1]
        if progress is not None:
            progress(pos, n)
    return logits


@torch.no_grad()
def greedy_decode(lm: LoadedModel, cache: NammCache, first_logits: torch.Tensor, max_new_tokens: int,
                  stop_ids: set[int], decoding: Decoding | None = None, prefix: Sequence[int] = ()) -> list[int]:
    """Greedy answer tokens (stop tokens left out), with `decoding`'s guards against loops
    (`namm.decoding.DEFAULT_DECODING` when None; `Decoding.plain()` for plain greedy).
    `prefix`: answer tokens already emitted (and read by the cache); `first_logits` follow them."""
    decoding = DEFAULT_DECODING if decoding is None else decoding
    processors = decoding.processors()
    words = token_words(getattr(lm, "tokenizer", None)) if decoding.needs_words else None
    out: list[int] = list(prefix)
    logits = first_logits
    while len(out) < max_new_tokens:
        token = next_token(logits, out, processors)
        if token in stop_ids:
            break
        out.append(token)
        cut = answer_cut(out, decoding, words)
        if cut is not None:  # the answer repeats itself: keep one copy, stop
            return out[:cut]
        if len(out) == max_new_tokens:
            break
        step = torch.tensor([[token]], device=lm.device)
        full = lm.model(input_ids=step, past_key_values=cache, use_cache=True).logits
        if cache is not None:  # None: a model that keeps its own state (tests' scripted models)
            cache.after_forward(step, full)
        logits = full[:, -1]
    return out


def _fit_context(ctx_ids: torch.Tensor, q_len: int, max_new_tokens: int, max_context: int) -> torch.Tensor | None:
    """The context cut so the whole exchange fits the model's context, or None if it already fits."""
    excess = ctx_ids.shape[1] + q_len + max_new_tokens - max_context
    if excess <= 0:
        return None
    # keeps the start: the chat header and the beginning of the document
    return ctx_ids[:, : max(1, ctx_ids.shape[1] - excess)]


def generate(lm: LoadedModel, context: str | GenerationRequest, questions: str | Sequence[str] | None = None, *,
             policy: str | Policy = DEFAULT_POLICY, budget: Budget | float | int | None = None,
             instruction: str | None = None, max_new_tokens: int = 128, n_up: int = 512, query_aware: bool = False,
             truncate: bool = False, progress: Progress | None = None,
             decoding: Decoding | None = None, positions: str = "original",
             on_read: Callable[[Any], None] | None = None) -> GenerationResult:
    """Read `context` with a forgetting memory, then answer each question from the compressed cache.

    Takes a `namm.spec.GenerationRequest`, or its fields as arguments (validated into one: bad
    input raises an `InputError`); without questions, the instruction (or the default summary
    instruction) is asked.
    `decoding` sets the guards against repetition loops (`namm.decoding.Decoding`; None: the defaults).
    `positions`: "original" (the default) keeps every token at its RoPE position in the text;
    "reindexed" gives positions within the kept cache (StreamingLLM's scheme, namm/memory.py), so
    they stay below the cache's size however long the input; "auto" re-indexes only when an
    evicting policy reads more tokens than the model's context. On SmolLM2-135M, needles past
    8k tokens were found equally often with original and re-indexed positions
    (docs/benchmarks.md, "Positions past the trained context"): the default stays original.
    `on_read(memory)`: called with each `DocumentMemory` as reading left it, before any question
    is read into it (e.g. `namm.retention.document_retention(memory, context)` maps what it kept);
    it must not change the memory."""
    request = context if isinstance(context, GenerationRequest) else GenerationRequest(
        context=context, questions=questions or (), instruction=instruction, policy=policy, budget=budget,
        max_new_tokens=max_new_tokens, n_up=n_up, query_aware=query_aware, truncate=truncate)
    context, max_new_tokens, n_up = request.context, request.max_new_tokens, request.n_up
    query_aware, truncate = request.query_aware, request.truncate
    questions, instruction = request.prompts()
    pol = make_policy(request.policy, request.budget, model_name=lm.name)
    started = time.perf_counter()
    tok = lm.tokenizer
    stats = GenerationStats(query_aware=query_aware)

    parts = [split_prompt(tok, context, q, instruction, query_aware=query_aware) for q in questions]
    # query-agnostic: one context for every question, read and compressed once;
    # query-aware: each question comes before its own copy of the document
    shared = not query_aware
    runs = []
    shared_ctx = encode_text(tok, parts[0].context) if shared else None
    for part in parts:
        ctx_ids = shared_ctx if shared else encode_text(tok, part.context)
        runs.append([ctx_ids, encode_text(tok, part.question)])
    if not pol.evicts:  # only a memory that forgets can read past the model's context
        for run in runs:
            cut = _fit_context(run[0], run[1].shape[1], max_new_tokens, lm.max_context)
            if cut is None:
                continue
            if not truncate:
                need = run[0].shape[1] + run[1].shape[1] + max_new_tokens
                raise ContextTooLongError(
                    f"input needs {need} tokens but {lm.name} has a {lm.max_context}-token context and the "
                    f"'{pol.name}' policy does not bound the cache; use a memory policy (e.g. surprisal) or truncate=True"
                )
            run[0] = cut
            stats.truncated = True
        if shared:  # every question sees the same (shortest) cut
            shortest = min(runs, key=lambda r: r[0].shape[1])[0]
            for run in runs:
                run[0] = shortest

    # reading and answering live in namm/document_memory.py, which builds on this module's
    # prefill and decoding (hence imported here, not at the top)
    from .document_memory import _answer, _note_cache, _positions, _read_ids

    longest = max(r[0].shape[1] + r[1].shape[1] for r in runs) + max_new_tokens
    where = _positions(positions, pol.evicts, longest, lm.max_context)
    stop = stop_token_ids(tok)
    answers: list[str] = []
    memory = None
    for i, (ctx_ids, q_ids) in enumerate(runs):
        if memory is None or not shared:
            t0 = time.perf_counter()
            memory = _read_ids(lm, ctx_ids, pol, n_up, where, progress)
            stats.seconds_prefill += time.perf_counter() - t0
            stats.tokens_in += ctx_ids.shape[1]
            _note_cache(stats, memory.cache)  # the work of reading
            if on_read is not None:
                on_read(memory)
        # every question on its own copy of the compressed document; the last one on the
        # memory itself, which is dropped afterwards
        last = not shared or i == len(runs) - 1
        cache = memory._spend() if last else memory.fork()
        answers.append(_answer(lm, cache, q_ids, max_new_tokens, stop, decoding, stats, first=i == 0))
    stats.seconds = time.perf_counter() - started
    return GenerationResult(answers=answers, policy=pol.name, budget=pol.budget, stats=stats)


def _add_work(stats: GenerationStats, work: dict) -> None:
    stats.kv_token_steps += work["kv_token_steps"]
    stats.kv_token_steps_full += work["kv_token_steps_full"]
    stats.kv_updates.extend(work["kv_updates"])
    stats.seconds_policy += work["policy_seconds"]
    stats.policy_updates += work["policy_updates"]


@torch.no_grad()
def continuation_logits(lm: LoadedModel, context_ids: torch.Tensor, continuation_ids: torch.Tensor,
                        policy: str | Policy = "full", budget: float | int | None = None,
                        n_up: int = 512, stats: GenerationStats | None = None) -> torch.Tensor:
    """Next-token logits [len(continuation), V] for each continuation token, after reading the
    context with `policy`. Position i predicts continuation token i (teacher forcing).
    When `stats` is given it receives the memory figures (kept fraction after the context, bytes)."""
    pol = make_policy(policy, budget, model_name=lm.name)
    cache = NammCache(lm.model.config, pol, n_up=n_up)
    ctx = context_ids.reshape(1, -1)
    cont = continuation_ids.reshape(1, -1).to(lm.device)
    first = prefill(lm, cache, ctx)
    cache.flush()
    if stats is not None:
        stats.tokens_in = ctx.shape[1]
        stats.kv_kept_per_layer = cache.kept_per_layer()
        stats.kv_kept_fraction = cache.kept_fraction()
        stats.seconds_policy = cache.policy_seconds
    rows = [first]
    if cont.shape[1] > 1:
        out = lm.model(input_ids=cont[:, :-1], past_key_values=cache, use_cache=True)
        cache.after_forward(cont[:, :-1], out.logits)
        rows.append(out.logits[0])
    if stats is not None:
        stats.kv_bytes_peak = cache.peak_used_bytes
        stats.kv_bytes_full_peak = cache.full_cache_bytes()
        stats.kv_bytes_allocated_peak = cache.peak_bytes
    return torch.cat([r.reshape(-1, r.shape[-1]) for r in rows], dim=0).float()
