"""Batched generation: several documents at once, each with its own memory, budget and questions.

`generate_batch(lm, requests)` answers every request as `namm.generate` would, one at a time,
and returns, in the order given, a `GenerationResult` or the exception that request raised.

Design (continuous batching over per-request memories):

* Every request keeps its own `NammCache` (batch row B = 1), its own policy object and its own
  update schedule, exactly as `namm.generate` builds them: a policy's decisions and the surprisal
  record are per cache, so nothing of one request can leak into another's memory.
* Reading is chunked as in `namm.prefill` (chunks end where an update is due) and the chunks of
  the documents being read are interleaved with the decoding steps: one chunk, then one decoding
  step of every answer in the batch, and so on; while rows are free and no answer waits to take
  them, reading goes on chunk after chunk first (`fill_batch`), since a step of 8 rows costs
  little more than a step of 1. A chunk is a forward of its own request (B = 1): on a CPU a
  512-token chunk already keeps the matrix units busy, so stacking chunks buys little.
* Decoding is batched (`namm.batched_step`): one model forward takes the next token of every
  answer being decoded (up to `max_batch`). Everything but attention (embeddings, projections, MLPs, the LM head,
  the weights read from memory once per step instead of once per answer) runs over the N rows
  at once; attention runs row by row, each row over its own cache, with that cache's own mask
  (`NammLayer.attention_mask`), its own RoPE positions and its own eviction schedule
  (`NammLayer.after_attention`, then `NammCache.after_forward` with the row's logits). The
  per-row part is the same code, with the same shapes, as a one-at-a-time step.
* Continuous batching: an answer that ends (stop token, `max_new_tokens`, or the loop guard)
  leaves the batch at once; the next waiting answer joins at the next step. New requests are
  admitted while fewer than `max_batch + read_ahead` answers are in the pipeline (decoding,
  waiting to join, or waiting for their document to be read).
* Questions: as in `namm.generate`, the document is read and compressed once and every question
  is read into its own copy of that memory (the last one into the memory itself), with the
  policy's state put back as reading left it; here the questions of one document decode side by
  side, each with its own copy of the policy. Query-aware requests read one copy of the
  document per question, one after the other, with one policy, as `namm.generate` does.
* Errors: a request's bad input (an `InputError` from validation, a document too long for the
  full cache...) or any error raised while reading it, reading its questions, or in its row of
  a decoding step, fails that request only; the others go on. An error in the shared part of a
  decoding step (a projection over every row, e.g. out of memory) fails the requests of that step.

Exactness: each answer is token-identical to `namm.generate`'s when the batched projections
round as the one-row ones do; on a CPU a matrix product over N rows need not add in the same
order as over one, so logits can differ in the last bits (measured: tests/model/test_batch_model.py
compares answers and statistics with `namm.generate` on the real model).

Statistics per request are `namm.generate`'s (`GenerationStats`), folded in the same order;
`seconds_decode` is the wall time of the batched steps the request's answers took part in
(shared with the other rows), `seconds` the time from admission to the last answer.
"""
from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from .batched_step import batched_step, packed_linears
from .decoding import DEFAULT_DECODING, Decoding, answer_cut, next_token, token_words
from .errors import ContextTooLongError
from .generate import GenerationResult, GenerationStats, _add_work, _fit_context
from .memory import NammCache, static_capacity
from .models import LoadedModel
from .policies import Policy, make_policy
from .prompts import encode_text, split_prompt, stop_token_ids
from .spec import GenerationRequest

Outcome = GenerationResult | Exception


# ---- requests, reads and answers -----------------------------------------------------------------
@dataclass
class _Job:
    index: int
    request: GenerationRequest
    policy: Policy
    runs: list[list[torch.Tensor]]  # [context ids, question ids] per question
    shared: bool
    where: str
    stats: GenerationStats
    answers: list[str | None]
    work: list[dict | None]  # each answer's figures, folded in question order at the end
    started: float
    open: int                # answers not finished
    next_run: int = 0        # query-aware: the next run to read
    read_parts: dict = field(default_factory=dict)  # first question of a read -> its figures
    error: Exception | None = None


@dataclass
class _Read:
    """A document being read into a memory, and the answers waiting for it."""
    job: _Job
    ids: torch.Tensor
    cache: NammCache
    questions: list[int]
    pos: int = 0
    seconds: float = 0.0
    state: dict = field(default_factory=dict)


@dataclass
class _Answer:
    """One question read into its copy of a memory and decoded."""
    job: _Job
    qi: int
    read: _Read
    last: bool               # the memory's last question: reads into the memory itself
    cache: NammCache | None = None
    out: list[int] = field(default_factory=list)
    processors: Any = None
    token: int | None = None
    seconds_decode: float = 0.0
    work: dict = field(default_factory=dict)


class _Batch:
    def __init__(self, lm: LoadedModel, max_batch: int, read_ahead: int, decoding: Decoding | None,
                 positions: str, on_result: Callable[[int, Outcome], None] | None, pack_weights: bool | None = None,
                 fill_batch: bool = True):
        self.lm = lm
        self.fill_batch = fill_batch
        self.linears = packed_linears(lm, max_batch) if pack_weights is not False and max_batch > 1 else None
        self.max_batch = max_batch
        self.read_ahead = read_ahead
        self.decoding = DEFAULT_DECODING if decoding is None else decoding
        self.positions = positions
        self.on_result = on_result
        self.stop = stop_token_ids(lm.tokenizer)
        self.words = token_words(lm.tokenizer) if self.decoding.needs_words else None
        self.results: dict[int, Outcome] = {}
        self.waiting: deque[tuple[int, Any]] = deque()
        self.reading: deque[_Read] = deque()
        self.ready: deque[_Answer] = deque()
        self.rows: list[_Answer] = []
        self.report = {"decode_steps": 0, "decode_rows": 0, "decode_seconds": 0.0, "read_chunks": 0,
                       "read_seconds": 0.0, "question_seconds": 0.0}

    # -- outcomes --
    def _done(self, index: int, outcome: Outcome) -> None:
        self.results[index] = outcome
        if self.on_result is not None:
            self.on_result(index, outcome)

    def _fail(self, job: _Job, exc: Exception) -> None:
        if job.error is None:
            job.error = exc
            self._done(job.index, exc)
        self.reading = deque(r for r in self.reading if r.job is not job)
        self.ready = deque(a for a in self.ready if a.job is not job)
        self.rows = [a for a in self.rows if a.job is not job]

    # -- admission --
    def _in_pipeline(self) -> int:
        return len(self.rows) + len(self.ready) + sum(len(r.questions) for r in self.reading)

    def _admit(self) -> None:
        while self.waiting and self._in_pipeline() < self.max_batch + self.read_ahead:
            index, raw = self.waiting.popleft()
            try:
                job = self._prepare(index, raw)
                self._start_read(job)
            except Exception as exc:
                self._done(index, exc)

    def _prepare(self, index: int, raw) -> _Job:
        """What namm.generate does before reading: validate, build the policy, tokenize, cut a
        full-cache context that does not fit (or refuse it), choose the position mode."""
        from .document_memory import _positions

        if isinstance(raw, GenerationRequest):
            request = raw
        elif isinstance(raw, Mapping):
            request = GenerationRequest(**raw)
        else:
            raise TypeError(f"a request must be a GenerationRequest or a mapping of its fields, got {type(raw).__name__}")
        started = time.perf_counter()
        lm, tok = self.lm, self.lm.tokenizer
        policy = request.policy
        if isinstance(policy, Policy):  # one object given to several requests must not be shared
            policy = copy.deepcopy(policy)
        pol = make_policy(policy, request.budget, model_name=lm.name)
        questions, instruction = request.prompts()
        max_new = request.max_new_tokens
        stats = GenerationStats(query_aware=request.query_aware)
        parts = [split_prompt(tok, request.context, q, instruction, query_aware=request.query_aware)
                 for q in questions]
        shared = not request.query_aware
        shared_ctx = encode_text(tok, parts[0].context) if shared else None
        runs = [[shared_ctx if shared else encode_text(tok, p.context), encode_text(tok, p.question)] for p in parts]
        if not pol.evicts:
            for run in runs:
                cut = _fit_context(run[0], run[1].shape[1], max_new, lm.max_context)
                if cut is None:
                    continue
                if not request.truncate:
                    need = run[0].shape[1] + run[1].shape[1] + max_new
                    raise ContextTooLongError(
                        f"input needs {need} tokens but {lm.name} has a {lm.max_context}-token context and the "
                        f"'{pol.name}' policy does not bound the cache; use a memory policy (e.g. surprisal) or "
                        f"truncate=True")
                run[0] = cut
                stats.truncated = True
            if shared:
                shortest = min(runs, key=lambda r: r[0].shape[1])[0]
                for run in runs:
                    run[0] = shortest
        longest = max(r[0].shape[1] + r[1].shape[1] for r in runs) + max_new
        where = _positions(self.positions, pol.evicts, longest, lm.max_context)
        n = len(runs)
        return _Job(index=index, request=request, policy=pol, runs=runs, shared=shared, where=where, stats=stats,
                    answers=[None] * n, work=[None] * n, started=started, open=n)

    def _start_read(self, job: _Job) -> None:
        """Queue the next document read of `job`: the shared one (every question), or in query-aware
        mode the next question's own."""
        rope = self.lm.model.model.rotary_emb.inv_freq if job.where == "reindexed" else None
        if job.shared:
            questions = list(range(len(job.runs)))
            ids = job.runs[0][0]
        else:
            questions = [job.next_run]
            ids = job.runs[job.next_run][0]
            job.next_run += 1
        cache = NammCache(self.lm.model.config, job.policy, n_up=job.request.n_up, rope_inv_freq=rope,
                          capacity=static_capacity(job.policy, ids.shape[1], job.request.n_up))
        self.reading.append(_Read(job=job, ids=ids.to(self.lm.device), cache=cache, questions=questions))

    # -- reading --
    @torch.no_grad()
    def _read_chunk(self, read: _Read) -> None:
        """One chunk of `read`'s document, as namm.prefill feeds it; at the end, the final update
        and the questions waiting for this memory join the queue."""
        t0 = time.perf_counter()
        cache, ids = read.cache, read.ids
        chunk = ids[:, read.pos: read.pos + cache.next_chunk()]
        keep = 0 if cache.wants_logits else 1
        out = self.lm.model(input_ids=chunk, past_key_values=cache, use_cache=True, logits_to_keep=keep)
        cache.after_forward(chunk, out.logits)
        read.pos += chunk.shape[1]
        if read.pos >= ids.shape[1]:
            cache.flush()
            read.state = {k: v.clone() for k, v in read.job.policy.memory_state().items()}
        read.seconds += time.perf_counter() - t0
        self.report["read_chunks"] += 1
        self.report["read_seconds"] += time.perf_counter() - t0
        if read.pos >= ids.shape[1]:
            from .document_memory import _note_cache

            job = read.job
            part = GenerationStats()
            _note_cache(part, cache)  # the work of reading
            job.read_parts[read.questions[0]] = {"seconds_prefill": read.seconds, "tokens_in": ids.shape[1],
                                                 "seconds_decode": 0.0, "tokens_out": 0, "stats": part}
            self.reading.remove(read)
            for n, qi in enumerate(read.questions):
                self.ready.append(_Answer(job=job, qi=qi, read=read, last=n == len(read.questions) - 1))

    # -- answering --
    @torch.no_grad()
    def _start_answer(self, ans: _Answer) -> None:
        """Read the question into its copy of the memory (the memory itself for the last one),
        then choose the first token; the answer joins the batch unless it is already over."""
        from .generate import prefill

        started = time.perf_counter()
        job, read = ans.job, ans.read
        if ans.last:
            job.policy.load_memory_state(read.state)
            ans.cache, read.cache = read.cache, None
        else:
            policy = copy.deepcopy(job.policy)
            policy.load_memory_state(read.state)
            ans.cache = read.cache.copy()
            ans.cache.policy = policy
        q_ids = job.runs[ans.qi][1]
        t0 = time.perf_counter()
        logits = prefill(self.lm, ans.cache, q_ids)
        ans.work["seconds_prefill"] = time.perf_counter() - t0
        ans.work["tokens_in"] = q_ids.shape[1]
        if ans.qi == 0:  # memory at answer time, for the first question
            job.stats.kv_kept_per_layer = ans.cache.kept_per_layer()
            job.stats.kv_kept_fraction = ans.cache.kept_fraction()
        ans.processors = self.decoding.processors()
        t0 = time.perf_counter()
        going = self._choose(ans, logits)
        ans.seconds_decode += time.perf_counter() - t0
        self.report["question_seconds"] += time.perf_counter() - started
        if going:
            self.rows.append(ans)
        else:
            self._finish(ans)

    def _choose(self, ans: _Answer, logits: torch.Tensor) -> bool:
        """One step of namm.greedy_decode: pick the next token from `logits` [1, V]; True when it
        must be fed back (the answer goes on)."""
        max_new = ans.job.request.max_new_tokens
        token = next_token(logits, ans.out, ans.processors)
        if token in self.stop:
            return False
        ans.out.append(token)
        cut = answer_cut(ans.out, self.decoding, self.words)
        if cut is not None:  # the answer repeats itself: keep one copy, stop
            ans.out = ans.out[:cut]
            return False
        if len(ans.out) >= max_new:
            return False
        ans.token = token
        return True

    def _finish(self, ans: _Answer) -> None:
        from .document_memory import _note_cache

        job = ans.job
        job.answers[ans.qi] = self.lm.tokenizer.decode(ans.out, skip_special_tokens=True).strip()
        part = GenerationStats()
        _note_cache(part, ans.cache)
        job.work[ans.qi] = {**ans.work, "seconds_decode": ans.seconds_decode, "tokens_out": len(ans.out),
                            "stats": part}
        ans.cache = None
        job.open -= 1
        if not job.shared and job.next_run < len(job.runs):
            self._start_read(job)  # query-aware: the next question's own copy of the document
        if job.open == 0:
            self._complete(job)

    def _complete(self, job: _Job) -> None:
        stats = job.stats
        # in namm.generate's order: a document's reading, then each question read into it
        ordered = []
        for i, answer in enumerate(job.work):
            if i in job.read_parts:
                ordered.append(job.read_parts[i])
            ordered.append(answer)
        for w in ordered:
            part = w["stats"]
            stats.seconds_prefill += w["seconds_prefill"]
            stats.seconds_decode += w["seconds_decode"]
            stats.tokens_in += w["tokens_in"]
            stats.tokens_out += w["tokens_out"]
            stats.kv_bytes_peak = max(stats.kv_bytes_peak, part.kv_bytes_peak)
            stats.kv_bytes_full_peak = max(stats.kv_bytes_full_peak, part.kv_bytes_full_peak)
            stats.kv_bytes_allocated_peak = max(stats.kv_bytes_allocated_peak, part.kv_bytes_allocated_peak)
            _add_work(stats, {"kv_token_steps": part.kv_token_steps, "kv_token_steps_full": part.kv_token_steps_full,
                              "kv_updates": part.kv_updates, "policy_seconds": part.seconds_policy,
                              "policy_updates": part.policy_updates})
        stats.seconds = time.perf_counter() - job.started
        self._done(job.index, GenerationResult(answers=list(job.answers), policy=job.policy.name,
                                               budget=job.policy.budget, stats=stats))

    def _decode_step(self) -> None:
        rows = self.rows
        t0 = time.perf_counter()
        try:
            # one row alone takes the one-row path, exactly namm.generate's step
            linears = self.linears if len(rows) > 1 else None
            logits, failed = batched_step(self.lm, [a.cache for a in rows], [a.token for a in rows], linears)
        except Exception as exc:  # the shared part of the step failed: every row in it
            for a in list(rows):
                self._fail(a.job, exc)
            return
        step_seconds = time.perf_counter() - t0
        self.report["decode_steps"] += 1
        self.report["decode_rows"] += len(rows)
        self.report["decode_seconds"] += step_seconds
        for i, ans in enumerate(list(rows)):
            if ans.job.error is not None:
                continue
            if i in failed:
                self._fail(ans.job, failed[i])
                continue
            ans.seconds_decode += step_seconds
            try:
                going = self._choose(ans, logits[i:i + 1])
            except Exception as exc:
                self._fail(ans.job, exc)
                continue
            if not going:
                self.rows.remove(ans)
                self._finish(ans)

    # -- the loop --
    def _join(self) -> None:
        """Continuous batching: answers whose memory is read take the free rows."""
        while self.ready and len(self.rows) < self.max_batch:
            ans = self.ready.popleft()
            try:
                self._start_answer(ans)
            except Exception as exc:
                self._fail(ans.job, exc)

    def _free_rows(self) -> int:
        return self.max_batch - len(self.rows) - len(self.ready)

    def run(self, requests: Iterable) -> list[Outcome]:
        self.waiting = deque(enumerate(requests))
        total = len(self.waiting)
        while self.waiting or self.reading or self.ready or self.rows:
            self._admit()
            self._join()
            # one chunk of reading between two decoding steps; more while rows are free and the
            # answers waiting cannot fill them (a step costs about as much for 1 row as for 8)
            chunks = 0
            while self.reading and (chunks == 0 or (self.fill_batch and self._free_rows() > 0)):
                read = self.reading[0]
                try:
                    self._read_chunk(read)
                except Exception as exc:
                    self._fail(read.job, exc)
                chunks += 1
                if self.fill_batch:
                    self._join()
                    self._admit()
            if self.rows:
                self._decode_step()
        if self.linears is not None:
            self.linears.release()
        return [self.results[i] for i in range(total)]


def generate_batch(lm: LoadedModel, requests: Iterable[GenerationRequest | Mapping[str, Any]], *,
                   max_batch: int = 8, read_ahead: int | None = None, decoding: Decoding | None = None,
                   positions: str = "original", pack_weights: bool | None = None, fill_batch: bool = True,
                   on_result: Callable[[int, Outcome], None] | None = None,
                   report: dict | None = None) -> list[Outcome]:
    """Answer several requests at once, each exactly as `namm.generate(lm, request)` would.

    `requests`: `GenerationRequest`s, or mappings of their fields (validated here: bad input
    becomes that request's outcome). Each has its own document, questions, policy, budget,
    `max_new_tokens` and `n_up`.
    `max_batch`: most answers decoded in one forward (a request with k questions decodes k).
    `read_ahead`: answers that may wait, read or being read, beyond a full batch (default
    `max_batch`): documents are read ahead so a finished answer's place is taken at once.
    `decoding`, `positions`: as in `namm.generate`, for every request.
    `pack_weights`: decode several rows with prepacked copies of the weights (`PackedLinears`;
    None: on a CPU with float32 weights, where it makes a batched step ~1.2-1.6x faster, for one
    more copy of the weights while the call runs).
    `fill_batch`: while rows are free and no answer waits to take them, read on (chunk after
    chunk) before the next decoding step, so steps run full; False: strictly one chunk of
    reading per decoding step (answers already decoding wait less, steps run emptier).
    `on_result(index, outcome)`: called as each request finishes (or fails).
    `report`: a dict that receives the schedule's figures: decode_steps, decode_rows (rows summed
    over the steps), decode_seconds (wall time of the batched steps), read_chunks, read_seconds,
    question_seconds (copying memories, reading questions, choosing first tokens).

    Returns one outcome per request, in order: its `GenerationResult`, or the exception it
    raised (an `InputError` for bad input); one request's error never stops the others.
    See the module docstring for the schedule and what is shared.
    """
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    read_ahead = max_batch if read_ahead is None else read_ahead
    if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) or read_ahead < 0:
        raise ValueError(f"read_ahead must be an integer >= 0, got {read_ahead!r}")
    if positions not in ("auto", "original", "reindexed"):
        raise ValueError(f"positions must be auto, original or reindexed, got {positions!r}")
    batch = _Batch(lm, max_batch, read_ahead, decoding, positions, on_result, pack_weights, fill_batch)
    try:
        return batch.run(list(requests))
    finally:
        if report is not None:
            report.update(batch.report)


__all__ = ["generate_batch"]
