"""Train / validation / test splits.

Two things keep the splits apart:

* seeds: sample ``index`` i of a split gets the seed ``SEED_OFFSETS[split] + i``; the offsets
  are a million apart, so no two splits ever share a seed;
* haystack sources: every source (a stdlib module, a documentation topic) belongs to exactly
  one split, decided by a stable hash of its id, so the text a test sample is built from was
  never seen by evolution (which uses train and validation only).
"""

from __future__ import annotations

import hashlib
import random

SPLITS = ("train", "validation", "test")
SEED_OFFSETS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
SEEDS_PER_SPLIT = 1_000_000
# share of sources per split, in percent (cumulative bounds: train < 60 <= validation < 80 <= test)
_BOUNDS = (("train", 60), ("validation", 80), ("test", 100))


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100


def split_of(source_id: str) -> str:
    """The split a haystack source belongs to (stable across machines and runs)."""
    b = _bucket(source_id)
    for name, upper in _BOUNDS:
        if b < upper:
            return name
    raise AssertionError("unreachable")


def sample_seed(split: str, index: int) -> int:
    check_split(split)
    if not 0 <= index < SEEDS_PER_SPLIT:
        raise ValueError(f"sample index must be in [0, {SEEDS_PER_SPLIT}), got {index}")
    return SEED_OFFSETS[split] + index


def sample_rng(task: str, length: int, seed: int) -> random.Random:
    """A generator's private random stream: a function of (task, length, seed) only."""
    digest = hashlib.sha256(f"{task}|{length}|{seed}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
