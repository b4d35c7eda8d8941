"""What a NammCache holds and what it did, counted exactly for usage records and cost reports.

Besides the bytes allocated (`current_bytes`, `peak_bytes`: storage with its headroom), a cache
counts:
  `used_bytes` / `peak_used_bytes`: bytes of the slots in use (valid entries and the padding
    of ragged heads; allocation headroom left out), the figure comparable with
    `full_cache_bytes()`, which a full cache of the same tokens holds;
  `kv_entry_steps`: for every token read, the valid entries it attends to (itself included),
    summed over layers, batch rows and KV heads; `full_entry_steps` the same for a full cache
    over the same tokens. Divided by layers x rows x heads they are KV token-steps;
  `update_log`: per update round (every layer at once), tokens read and valid entries
    before and after, summed over layers, rows and heads.
`take_work()` hands these counters over and zeroes them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the layers are only read here
    from .memory import NammLayer


class CacheAccounting:
    """The counters of a NammCache (mixed into it; the cache calls `start_accounting` first and
    reports storage with `_account`, slots in use with `_use`, reading with `_count_work`, and
    each update with `_log_update`). Reads `self.layers`, `self.kv_heads`, `self.head_dim`."""

    def start_accounting(self) -> None:
        self.current_bytes = 0
        self.peak_bytes = 0
        self.policy_seconds = 0.0
        self.n_updates = 0
        self.used_bytes = 0
        self.peak_used_bytes = 0
        self.kv_entry_steps = 0
        self.full_entry_steps = 0
        self.update_log: list[list[int]] = []

    def _account(self, delta: int) -> None:
        self.current_bytes += delta
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def _use(self, delta: int) -> None:
        self.used_bytes += delta
        self.peak_used_bytes = max(self.peak_used_bytes, self.used_bytes)

    def _count_work(self, layer: NammLayer, q: int) -> None:
        """`q` tokens join `layer`: token i of them (1-based) attends to the valid entries
        already there plus i (itself and the new tokens before it)."""
        heads = layer.keys.shape[0] * layer.keys.shape[1]
        new = heads * q * (q + 1) // 2
        self.kv_entry_steps += q * layer.valid_count + new
        self.full_entry_steps += q * layer.seen * heads + new

    def _log_update(self, layer: NammLayer, before: int) -> None:
        """One row per update round: [tokens read, entries before, entries after]."""
        if layer.layer_idx == 0 or not self.update_log or self.update_log[-1][0] != layer.seen:
            self.update_log.append([layer.seen, 0, 0])
        self.update_log[-1][1] += before
        self.update_log[-1][2] += layer.valid_count

    def take_work(self) -> dict:
        """The work counted since the last call (see the class docstring), then zeroed.
        Entry counts are divided by layers x batch rows x KV heads: per-head token units."""
        first = self.layers[0]
        heads = len(self.layers) * (first.keys.shape[0] * first.keys.shape[1] if first.keys is not None else 1)
        work = {
            "kv_token_steps": self.kv_entry_steps / heads,
            "kv_token_steps_full": self.full_entry_steps / heads,
            "kv_updates": [[seen, round(b / heads, 2), round(a / heads, 2)] for seen, b, a in self.update_log],
            "policy_seconds": self.policy_seconds, "policy_updates": self.n_updates,
        }
        self.kv_entry_steps = self.full_entry_steps = 0
        self.update_log = []
        self.policy_seconds, self.n_updates = 0.0, 0
        return work

    def full_cache_bytes(self, tokens: int | None = None) -> int:
        """Bytes a plain full cache would hold for `tokens` tokens (default: tokens read so far)."""
        first = self.layers[0]
        if first.keys is None:
            return 0
        tokens = first.seen if tokens is None else tokens
        b = first.keys.shape[0]
        return 2 * len(self.layers) * b * self.kv_heads * self.head_dim * tokens * first.keys.element_size()

    def kept_per_layer(self) -> list[float]:
        return [layer.kept_entries() for layer in self.layers]

    def kept_fraction(self) -> float:
        seen = self.layers[0].seen
        if seen == 0:
            return 1.0
        kept = self.kept_per_layer()
        return sum(kept) / (len(kept) * seen)
