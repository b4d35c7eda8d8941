"""Errors raised by the namm library. Bad input subclasses ValueError so callers can map it to 4xx."""


class NammError(Exception):
    """Base class of every error namm raises on purpose."""


class ModelLoadError(NammError, ValueError):
    """The model path is missing, is not a causal LM, or has an unsupported architecture."""


class UnknownPolicyError(NammError, ValueError):
    """A policy name that is not registered."""


class ContextTooLongError(NammError, ValueError):
    """The input exceeds the model's context and nothing bounds the cache (full cache, no truncation)."""


class EmptyInputError(NammError, ValueError):
    """An empty document or question."""
