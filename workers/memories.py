"""The worker's side of stored documents (service/memories): read a document into a memory and
store it; answer a question from a stored memory without reading the document again.

A question finds its memory in this process's RAM (recently used ones, bounded in bytes by
`memories.ram_bytes`), else in the store (checksum verified on load). A memory that is missing
(evicted to free space, lost), corrupt, or stored under another model or policy is rebuilt from
the stored text, stored again, and the job's result says "memory rebuilt: <why>". The rebuild
is the service's cost, not the tenant's: the question is billed its own work only, and claims
no reuse saving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from cachetools import LRUCache

from namm.errors import CorruptMemoryError, InputError, MemoryMismatchError
from service.core.db import session_scope
from service.core.settings import get_settings
from service.core.state import on_reset
from service.jobs.repository import ClaimedJob
from service.memories.repository import MemoryRepository, ReadDone
from service.memories.store import memory_store
from service.models import MemoryStatus

logger = logging.getLogger(__name__)

_ram: LRUCache | None = None


def _ram_cache() -> LRUCache:
    global _ram
    if _ram is None:
        _ram = LRUCache(maxsize=max(1, get_settings().memories.ram_bytes), getsizeof=lambda m: max(1, m.kv_bytes))
    return _ram


@on_reset
def _forget_ram() -> None:
    global _ram
    _ram = None


def _remember(key: str, memory) -> None:
    ram = _ram_cache()
    if memory.kv_bytes <= ram.maxsize:  # one larger than the whole cache is not kept
        ram[key] = memory


def ttl() -> timedelta:
    return timedelta(days=get_settings().memories.ttl_days)


def storage_key(memory_id: str, attempt: int | str) -> str:
    # a new key per write: a reader holding the old key never sees a file being replaced
    return f"{memory_id}.{attempt}.mem"


def read_output(memory, seconds: float) -> dict:
    """The read job's figures, shaped like namm.GenerationResult.to_dict() (usage and billing)."""
    cache = memory.cache
    work = cache.take_work()
    return {
        "text": "", "answers": [], "policy": memory.policy.name, "budget": memory.policy.budget,
        "tokens_in": memory.tokens, "tokens_out": 0,
        "kv_kept_per_layer": cache.kept_per_layer(), "kv_kept_fraction": cache.kept_fraction(),
        "kv_bytes_peak": cache.peak_used_bytes, "kv_bytes_full_peak": cache.full_cache_bytes(),
        "kv_bytes_allocated_peak": cache.peak_bytes,
        "kv_token_steps": work["kv_token_steps"], "kv_token_steps_full": work["kv_token_steps_full"],
        "kv_updates": work["kv_updates"], "seconds_prefill": seconds, "seconds_decode": 0.0,
        "seconds_policy": work["policy_seconds"], "seconds": seconds, "truncated": False,
        "policy_updates": work["policy_updates"], "query_aware": False,  # a stored document is read for any question
    }


def _read(lm, job: ClaimedJob, n_up: int, progress: Callable | None):
    import namm

    # positions as namm.generate takes them: re-indexed only when an evicting policy reads past
    # the model's context (a whole repository), so positions stay valid for every question
    return namm.read_document(lm, job.text, policy=job.policy, budget=job.budget, n_up=n_up,
                              positions="auto", progress=progress)


def run_read(lm, job: ClaimedJob, progress: Callable | None = None) -> tuple[dict, ReadDone]:
    """Read the document, store its memory; the job's output and what the row records."""
    settings = get_settings()
    started = time.perf_counter()
    memory = _read(lm, job, settings.model.n_up, progress)
    output = read_output(memory, time.perf_counter() - started)
    key = storage_key(job.memory_id, job.attempt)
    nbytes = _save(memory, key)
    _remember(key, _as_stored(lm, memory, key, job.policy, job.budget))
    output.update(memory_bytes_stored=nbytes, memory_kv_bytes=memory.kv_bytes,
                  memory_full_cache_bytes=memory.full_kv_bytes)
    done = ReadDone(model=getattr(lm, "name", None) or "unknown", tokens=memory.tokens,
                    kept_fraction=output["kv_kept_fraction"], bytes_stored=nbytes,
                    full_cache_bytes=memory.full_kv_bytes, storage_key=key,
                    kv_token_steps_full=output["kv_token_steps_full"])
    return output, done


def _policy(lm, name: str, budget):
    import namm

    return namm.make_policy(name, None if budget is None else budget.number, model_name=lm.name)


def _as_stored(lm, memory, key: str, policy: str, budget):
    """`memory` as the store gives it back: itself where the storage is exact (the model's
    dtype), else the file loaded again, so a question answered from RAM gets the tokens it
    would get from the store (a compact storage rounds keys and values)."""
    from namm.memory_file import DEFAULT_STORAGE

    if (get_settings().memories.storage or DEFAULT_STORAGE) == memory.manifest.dtype:
        return memory
    try:
        return memory_store().load(lm, key, policy=_policy(lm, policy, budget))
    except (OSError, CorruptMemoryError, MemoryMismatchError) as exc:  # just written: the store failed
        logger.error("memory %s does not load back: %s", key, exc)
        raise StoreFailed("the document was read but its memory could not be read back from the store; "
                          "retry later") from exc


class StoreFailed(Exception):
    """The memory could not be written to the store (a full disk, an unreachable object
    store): the service's failure, with a message safe to show the tenant."""


def _save(memory, key: str) -> int:
    from safetensors import SafetensorError

    try:
        return memory_store().save(memory, key, storage=get_settings().memories.storage)
    except (OSError, SafetensorError) as exc:  # namm.save_memory removed its temporary file
        logger.error("could not store memory %s: %s", key, exc)
        # safetensors says "Error while serializing: I/O error: No space left on device (...)"
        reason = getattr(exc, "strerror", None) or str(exc).split(": ", 1)[-1] or type(exc).__name__
        raise StoreFailed(f"the document was read but its memory could not be stored "
                          f"({reason}); retry later") from exc


class DocumentNotReadable(InputError):
    """The stored document's read failed: its questions cannot be answered."""


def _memory_for(lm, job: ClaimedJob, row) -> tuple[object, str, tuple[str, int] | None]:
    """(memory, where it came from, (new key, bytes) if it was rebuilt and stored again)."""
    key = row.storage_key
    if key:
        memory = _ram_cache().get(key)
        if memory is not None and memory.lm is lm:
            return memory, "ram", None
        try:
            # the row's policy and budget: a file stored under others is a mismatch
            memory = memory_store().load(lm, key, policy=_policy(lm, row.policy, row.budget))
            _remember(key, memory)
            return memory, "store", None
        except FileNotFoundError:
            why = "its file was missing from the store"
        except CorruptMemoryError as exc:
            why = f"its file was damaged ({exc.__class__.__name__})"
        except MemoryMismatchError as exc:
            why = f"it was stored under another model or policy ({exc})"
        logger.warning("stored document %s: memory %s unusable, rebuilding: %s", row.id, key, why)
    else:
        why = "it had been evicted from the store to free space"
    memory = _read(lm, job, get_settings().model.n_up, None)
    memory.cache.take_work()  # the rebuild is not the question's work (module docstring)
    new_key = storage_key(row.id, f"r{int(time.time() * 1000)}")
    try:
        nbytes = _save(memory, new_key)
        memory = _as_stored(lm, memory, new_key, row.policy, row.budget)
    except StoreFailed:  # the question is still answered from the rebuilt memory
        return memory, f"memory rebuilt: {why} (not stored again: the store refused it)", None
    _remember(new_key, memory)
    return memory, f"memory rebuilt: {why}", (new_key, nbytes)


def run_question(lm, job: ClaimedJob) -> dict:
    """Answer from the stored memory; the output says where the memory came from."""
    import namm

    with session_scope() as session:
        row = MemoryRepository(session).for_worker(job.memory_id)
        if row is None or row.status == MemoryStatus.expired.value:
            raise DocumentNotReadable("the stored document was deleted or expired")
        if row.status == MemoryStatus.failed.value:
            raise DocumentNotReadable(f"the stored document could not be read: {row.error or 'unknown'}")
        session.expunge(row)
    memory, source, rebuilt = _memory_for(lm, job, row)
    result = namm.ask(lm, memory, job.questions or None, instruction=job.instruction,
                      max_new_tokens=job.max_new_tokens)
    output = result.to_dict()
    output["memory"] = source
    if not source.startswith("memory rebuilt"):  # not read again: the reuse the report shows
        output["tokens_not_reread"] = memory.tokens
        output["reread_kv_token_steps_full"] = row.read_kv_token_steps_full
    with session_scope() as session:
        repo = MemoryRepository(session)
        repo.touch(row.id, ttl())
        if rebuilt is not None:
            old = row.storage_key
            repo.stored(row.id, *rebuilt)
            if old and old != rebuilt[0]:
                memory_store().delete(old)
    return output


__all__ = ["run_read", "run_question", "read_output", "DocumentNotReadable", "StoreFailed"]
