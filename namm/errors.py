"""Errors raised by the namm library.

Two kinds, told apart by class, never by message:
- `InputError`: the caller's input is wrong (empty document, unknown policy, bad budget, a
  document longer than the model's context). A service answers these with a 4xx, or records
  them on the job as the client's mistake.
- everything else, `ModelLoadError` included, is a failure on the server's side: a broken
  model path, a bug, an out-of-memory. `InputError` is deliberately *not* a `ValueError`, so a
  stray `ValueError` from a bug is never mistaken for bad input.

The concrete input errors also subclass `ValueError`, so code written as `except ValueError`
around a budget or a policy name keeps working; decide what is input with `InputError`.
"""


class NammError(Exception):
    """Base class of every error namm raises on purpose."""


class InputError(NammError):
    """The caller's input is invalid; the message says what to change."""


class ModelLoadError(NammError):
    """The model path is missing, is not a causal LM, or has an unsupported architecture.
    A deployment problem, not the input's: not an `InputError`."""


class UnknownPolicyError(InputError, ValueError):
    """A policy name that is not registered."""


class BudgetError(InputError, ValueError):
    """A memory budget that is malformed, out of range, or ambiguous about its unit."""


class RequestError(InputError, ValueError):
    """An option of a generation request out of range (max_new_tokens, n_up)."""


class ContextTooLongError(InputError, ValueError):
    """The input exceeds the model's context and nothing bounds the cache (full cache, no truncation)."""


class EmptyInputError(InputError, ValueError):
    """An empty document or question."""


class SavedMemoryError(NammError):
    """A saved document memory (namm.load_memory) cannot be used. Not the request's fault: a
    service rebuilds the memory from the document it keeps."""


class MemoryMismatchError(SavedMemoryError):
    """The memory was saved under another model, tokenizer, policy, dtype or format version;
    the message names each difference. Answering from it would be silently wrong."""


class CorruptMemoryError(SavedMemoryError):
    """The file is not a whole, intact namm memory: truncated, altered (checksum mismatch),
    unreadable, or not a memory at all."""


class NoTrainedScorerError(InputError, ValueError):
    """Policy `namm` asked for where no trained NAMM attention scorer exists (the shipped
    checkpoint's scorer is all zero): the shipped memory is policy `surprisal`."""
