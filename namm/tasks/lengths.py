"""Context lengths in tokens of the default model's tokenizer, estimated from characters.

Generators must run without loading a model (tests, quick exports), so they size contexts with
a characters-per-token ratio per kind of text, calibrated once against the SmolLM2-135M
tokenizer with ``python -m namm.tasks.calibrate`` (see docs/evaluation.md for the numbers it
printed). The evaluation records the real ``tokens_in`` of every prompt next to the estimate.
"""

from __future__ import annotations

import re

# characters per SmolLM2 token, measured on generated contexts of each kind (calibrate.py)
CHARS_PER_TOKEN = {
    "prose": 4.3,  # Python reference manual / module docs (measured 4.15 to 4.45)
    "code": 3.6,  # stdlib Python source (3.15 to 3.9: it depends on the modules drawn)
    "noise": 3.75,  # RULER's repeated filler sentences
}
# a '123. word' line of the common-words list (digits are single tokens in SmolLM2)
TOKENS_PER_LIST_LINE = 6.0


def chars_for_tokens(tokens: int, kind: str) -> int:
    return int(tokens * CHARS_PER_TOKEN[kind])


def estimate_tokens(text: str, kind: str) -> int:
    return round(len(text) / CHARS_PER_TOKEN[kind])


_LENGTH_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*$")


def parse_length(spec: str | int) -> int:
    """'2k' -> 2048 tokens, '1500' -> 1500. A 'k' is 1024 tokens (the model's 8k is 8192)."""
    if isinstance(spec, int):
        value = spec
    else:
        m = _LENGTH_RE.match(spec)
        if not m:
            raise ValueError(f"bad length {spec!r}: use a token count like 1500 or 2k")
        value = int(float(m.group(1)) * (1024 if m.group(2) else 1))
    if not 256 <= value <= 32768:
        raise ValueError(f"length {spec!r} out of range (256 to 32k tokens)")
    return value


def parse_lengths(spec: str) -> list[int]:
    return [parse_length(part) for part in spec.split(",") if part.strip()]


def length_label(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)
