"""The eviction-capable KV cache (transformers 5.x `Cache`) and the attention function paired with it.

Layout per layer: keys/values [B, H_kv, capacity, D]; slots [0, length) are in use, each with a
validity flag and its original RoPE position. Slots of one KV head are kept in position order, so
the newest `q` slots are always the tokens of the current forward. Heads evict independently, so
after eviction the layer is padded to the longest head and padding slots are masked out.

`get_seq_length()` is the logical length (tokens read): the model derives the RoPE positions of
new tokens from it, so positions stay right however many tokens were evicted.

Re-indexed positions (opt-in, `rope_inv_freq=`; namm.generate turns it on when an evicting
policy reads past the model's trained context): as in StreamingLLM, positions are given within
the kept cache instead of the text. At each compaction the kept keys are rotated to the slot
they now occupy (RoPE rotations compose: a key at position p becomes one at position j by a
rotation of j - p), and `get_seq_length()` returns the longest layer's physical length, so a new
token's position is at most that. Every position then stays below the cache's size plus one
update interval, however long the input. One rotation position per slot serves every head
(heads share slot indices; padding slots are masked).

The attention implementation `namm_sdpa` (namm/attention.py) runs SDPA with a mask built from those
flags, shows the forward's post-RoPE queries to the policy's signals, and every `n_up` tokens hands
the layer to its policy right after the layer's attention, so prefill and decoding evict on the
same schedule. What a policy reads besides the cache (the window's attention, each token's
surprisal) reaches it through one hook, its signals (namm/signals.py): the cache calls them all
alike and knows no policy by name.
"""
from __future__ import annotations

import time

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# the attention side lives in namm/attention.py; its public names are re-exported here
from .attention import (ATTN_IMPLEMENTATION, _causal_block_mask, _just_updated, register_attention,  # noqa: F401
                        rotate_keys, window_attention)
from .cache_accounting import CacheAccounting
from .policies.base import Policy, UpdateContext, budget_capacity
from .signals import Signal

# tokens per reading forward for a policy that never evicts (NammCache.next_chunk)
FULL_CACHE_CHUNK = 4096


class NammLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, cache: "NammCache", layer_idx: int):
        super().__init__()
        self.cache = cache
        self.layer_idx = layer_idx
        self.length = 0          # physical slots in use
        self.seen = 0            # logical tokens read
        self.since_update = 0    # tokens since the last policy update
        self.n_invalid = 0       # padding slots among [0, length)
        self.valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.rope_pos: torch.Tensor | None = None  # re-indexed mode: RoPE position of each slot
        self.pending_queries: list[torch.Tensor] = []
        self.state: dict[str, torch.Tensor] = {}
        self.scale: float | None = None
        self.slot_bytes = 0      # bytes of one slot (keys + values, every batch row and head)
        self.valid_count = 0     # valid entries summed over batch rows and heads

    # ---- transformers CacheLayerMixin interface -----------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.keys = key_states.new_empty((b, h, 0, d))
        self.values = value_states.new_empty((b, h, 0, value_states.shape[-1]))
        self.valid = torch.zeros((b, h, 0), dtype=torch.bool, device=self.device)
        self.positions = torch.zeros((b, h, 0), dtype=torch.long, device=self.device)
        self.slot_bytes = b * h * (key_states.shape[-1] + value_states.shape[-1]) * key_states.element_size()
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[2]
        if self.cache.rope_inv_freq is not None:
            if self.layer_idx == 0:  # the first layer of a forward: no layer has grown yet
                self.cache.rope_base = self.cache.rope_next()
            base = self.cache.rope_base
            new_pos = torch.arange(base, base + q, device=key_states.device)
            self.rope_pos = new_pos if self.rope_pos is None else torch.cat(
                [self.rope_pos[: self.length], new_pos])
        self._reserve(self.length + q)
        self.cache._count_work(self, q)
        new = slice(self.length, self.length + q)
        self.keys[:, :, new] = key_states
        self.values[:, :, new] = value_states
        self.valid[:, :, new] = True
        self.positions[:, :, new] = torch.arange(self.seen, self.seen + q, device=self.device)
        self.length += q
        self.seen += q
        self.since_update += q
        self.valid_count += q * self.keys.shape[0] * self.keys.shape[1]
        self.cache._use(q * self.slot_bytes)
        _just_updated.set(self)
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def get_seq_length(self) -> int:
        # the model gives new tokens the positions that follow this
        if self.cache.rope_inv_freq is not None:
            return self.cache.rope_next()
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        # abstract in transformers' CacheLayerMixin: the layer cannot be built without it
        return -1

    def reset(self) -> None:
        self.cache._account(-self.nbytes())
        self.cache._use(-self.length * self.slot_bytes)
        self.__init__(self.cache, self.layer_idx)

    # ---- storage ------------------------------------------------------------------------------
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.nbytes + self.values.nbytes

    def _replace_storage(self, keys, values, valid, positions) -> None:
        before = self.nbytes()
        self.keys, self.values, self.valid, self.positions = keys, values, valid, positions
        self.cache._account(self.nbytes() - before)

    def _headroom(self, seen_after: int) -> int:
        """Slots to allocate beyond what is needed now: a small step so decoding does not
        reallocate every token, never past the next update (which compacts anyway)."""
        if self.cache.policy.evicts:
            return min((-seen_after) % self.cache.n_up, 64)
        return 64

    def _reserve(self, needed: int) -> None:
        """Grow to `needed` slots plus headroom, so decoding does not reallocate every token. With
        a static capacity (NammCache `capacity`) the first allocation takes all of it; growing
        past it later (a question longer than an update interval) is counted in `regrowths`."""
        if needed <= self.keys.shape[2]:
            return
        cap = needed + self._headroom(self.seen + needed - self.length)
        if self.cache.capacity is not None:
            if self.keys.shape[2] > 0:
                self.cache.regrowths += 1
            cap = max(cap, self.cache.capacity)
        b, h, _, d = self.keys.shape
        keys = self.keys.new_empty((b, h, cap, d))
        values = self.values.new_empty((b, h, cap, self.values.shape[-1]))
        valid = torch.zeros((b, h, cap), dtype=torch.bool, device=self.device)
        positions = torch.zeros((b, h, cap), dtype=torch.long, device=self.device)
        n = self.length
        keys[:, :, :n], values[:, :, :n] = self.keys[:, :, :n], self.values[:, :, :n]
        valid[:, :, :n], positions[:, :, :n] = self.valid[:, :, :n], self.positions[:, :, :n]
        self._replace_storage(keys, values, valid, positions)

    # ---- attention ----------------------------------------------------------------------------
    def attention_mask(self, q_len: int, groups: int) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for SDPA over slots [0, length) with the last q_len slots as queries."""
        s = self.length
        if self.n_invalid == 0:
            if q_len == 1:
                return None, False
            if q_len == s:
                return None, True
            return _causal_block_mask(q_len, s, self.device)[None, None], False
        valid = self.valid[:, :, :s].repeat_interleave(groups, dim=1)[:, :, None, :]  # [B, Hq, 1, S]
        if q_len == 1:
            return valid, False
        return valid & _causal_block_mask(q_len, s, self.device)[None, None], False

    def after_attention(self, query: torch.Tensor, scale: float) -> None:
        policy = self.cache.policy
        if not policy.evicts:
            return
        self.scale = scale
        for signal in self.cache.signals:
            signal.observe_attention(self, query, scale)
        # deferred updates (a signal reads the logits) wait for `after_forward`; a caller that
        # never hands the logits over still gets its cache bounded, one interval late
        due = 2 * self.cache.n_up if self.cache.defer_updates else self.cache.n_up
        if self.since_update >= due:
            self.run_update()

    # ---- eviction -----------------------------------------------------------------------------
    def run_update(self) -> None:
        """Let the policy score this layer's slots and keep the selected ones."""
        if self.since_update == 0 or self.keys is None:
            return
        if self.keys.is_cuda:  # time the policy, not the forward kernels still queued before it
            torch.cuda.synchronize(self.keys.device)
        started = time.perf_counter()
        policy = self.cache.policy
        s = self.length
        ctx = UpdateContext(
            layer_idx=self.layer_idx, keys=self.keys[:, :, :s], values=self.values[:, :, :s],
            positions=self.positions[:, :, :s], valid=self.valid[:, :, :s], seen=self.seen,
            n_new=self.since_update, state=self.state,
        )
        for signal in self.cache.signals:
            for name, value in signal.read(self, ctx).items():
                setattr(ctx, name, value)
        keep = policy.select(ctx) & ctx.valid
        self.state = ctx.state
        before = self.valid_count
        if not bool((keep == ctx.valid).all()):  # only copy when something was evicted
            self._compact(keep)
            self.valid_count = int(keep.sum())
        self.cache._log_update(self, before)
        self.since_update = 0
        for signal in self.cache.signals:
            signal.updated(self)
        self.cache.policy_seconds += time.perf_counter() - started
        self.cache.n_updates += 1

    def _compact(self, keep: torch.Tensor) -> None:
        """Gather kept slots (order preserved) to the front; pad heads to the longest. With a
        static capacity, in place (the freed slots are reused, nothing is reallocated); else into
        new, smaller tensors."""
        s = self.length
        counts = keep.sum(dim=-1)
        kept = int(counts.max())
        order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices[..., :kept]
        b, h, _, d = self.keys.shape
        cap = kept + self._headroom(self.seen)

        def gather(t: torch.Tensor) -> torch.Tensor:
            idx = order.reshape(*order.shape, *([1] * (t.dim() - 3))).expand(b, h, kept, *t.shape[3:])
            return t[:, :, :s].gather(2, idx)

        if self.cache.capacity is not None:
            self._compact_in_place(gather, order, counts, kept)
            return
        keys = self.keys.new_empty((b, h, cap, d))
        values = self.values.new_empty((b, h, cap, self.values.shape[-1]))
        valid = torch.zeros((b, h, cap), dtype=torch.bool, device=self.device)
        positions = torch.zeros((b, h, cap), dtype=torch.long, device=self.device)
        keys[:, :, :kept], values[:, :, :kept] = gather(self.keys), gather(self.values)
        if self.rope_pos is not None:  # re-indexed: each kept key moves to its slot's position
            new = torch.arange(kept, device=self.device)
            delta = new[None, None, :] - self.rope_pos[:s][order]
            keys[:, :, :kept] = rotate_keys(keys[:, :, :kept], delta, self.cache.rope_inv_freq)
            self.rope_pos = new
        valid[:, :, :kept] = torch.arange(kept, device=self.device) < counts[..., None]
        positions[:, :, :kept] = gather(self.positions)
        self.state = {name: gather(t) for name, t in self.state.items()}
        self._replace_storage(keys, values, valid, positions)
        self.cache._use((kept - self.length) * self.slot_bytes)
        self.length = kept
        self.n_invalid = int((~valid[:, :, :kept]).sum())

    def _compact_in_place(self, gather, order: torch.Tensor, counts: torch.Tensor, kept: int) -> None:
        """`_compact` within the static buffers: the same kept slots, values and order."""
        s = self.length
        keys, values, positions = gather(self.keys), gather(self.values), gather(self.positions)
        if self.rope_pos is not None:
            new = torch.arange(kept, device=self.device)
            keys = rotate_keys(keys, new[None, None, :] - self.rope_pos[:s][order], self.cache.rope_inv_freq)
            self.rope_pos = new
        self.keys[:, :, :kept], self.values[:, :, :kept], self.positions[:, :, :kept] = keys, values, positions
        self.valid[:, :, :kept] = torch.arange(kept, device=self.device) < counts[..., None]
        self.valid[:, :, kept:] = False
        self.state = {name: gather(t) for name, t in self.state.items()}
        self.cache._use((kept - self.length) * self.slot_bytes)
        self.length = kept
        self.n_invalid = int((~self.valid[:, :, :kept]).sum())

    # ---- statistics / snapshots ---------------------------------------------------------------
    def kept_entries(self) -> float:
        """Valid slots per KV head (averaged over batch and heads)."""
        if self.valid is None:
            return 0.0
        b, h, _ = self.valid.shape
        return float(self.valid[:, :, : self.length].sum()) / (b * h)

    def export(self) -> dict:
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        return {
            "keys": clone(self.keys), "values": clone(self.values), "valid": clone(self.valid),
            "positions": clone(self.positions), "length": self.length, "seen": self.seen,
            "since_update": self.since_update, "n_invalid": self.n_invalid, "scale": self.scale,
            "pending": [q.clone() for q in self.pending_queries],
            "state": {k: v.clone() for k, v in self.state.items()},
            "is_initialized": self.is_initialized, "slot_bytes": self.slot_bytes,
            "valid_count": self.valid_count, "rope_pos": clone(self.rope_pos),
        }

    def load(self, snap: dict, clone: bool = True) -> None:
        """Take the state `export` returned (cloned unless `clone=False`: a snapshot made for
        this layer alone, whose tensors it may keep)."""
        before, used_before = self.nbytes(), self.length * self.slot_bytes
        copy = (lambda t: t.clone()) if clone else (lambda t: t)  # noqa: E731
        s = {k: (copy(v) if isinstance(v, torch.Tensor) else v) for k, v in snap.items()}
        self.keys, self.values, self.valid, self.positions = s["keys"], s["values"], s["valid"], s["positions"]
        self.length, self.seen, self.since_update = s["length"], s["seen"], s["since_update"]
        self.n_invalid, self.scale, self.is_initialized = s["n_invalid"], s["scale"], s["is_initialized"]
        self.pending_queries = [copy(q) for q in s["pending"]]
        self.state = {k: copy(v) for k, v in s["state"].items()}
        self.slot_bytes, self.valid_count = s["slot_bytes"], s["valid_count"]
        self.rope_pos = s.get("rope_pos")
        if self.keys is not None:  # a fresh layer learns these in lazy_initialization otherwise
            self.dtype, self.device = self.keys.dtype, self.keys.device
        self.cache._account(self.nbytes() - before)
        self.cache._use(self.length * self.slot_bytes - used_before)


def static_capacity(policy: Policy, tokens: int, n_up: int) -> int | None:
    """Slots per layer a memory with `policy` needs to read `tokens` tokens, then questions and
    answers of up to one more update interval: the budget's cap there plus two intervals. Chunks
    end where updates are due, but the update that ends a read (`flush`) falls between two such
    boundaries, so the next update finds up to 2 x n_up - 1 new slots. None when the budget caps
    nothing (full, or no budget). A fraction budget's cap grows with what is read: a memory that
    reads far more than this after the document grows its storage (NammCache.regrowths)."""
    if not policy.evicts:
        return None
    cap = budget_capacity(policy.budget, tokens + n_up)
    if cap is None:
        return None
    return min(max(cap, policy.min_keep), tokens + n_up) + 2 * n_up


class NammCache(CacheAccounting, Cache):
    """A KV cache that forgets: one `NammLayer` per decoder layer, all driven by one policy.
    What it holds and what it did is counted by `CacheAccounting` (namm/cache_accounting.py).
    """

    def __init__(self, config, policy: Policy, n_up: int = 512,
                 rope_inv_freq: torch.Tensor | None = None, capacity: int | None = None):
        """`rope_inv_freq`: the model's rotary inverse frequencies, to re-index positions within
        the kept cache (module docstring); None keeps every token at its original position.
        `capacity`: slots per layer allocated once (`static_capacity`), for an evicting policy
        whose budget is a cap: updates then compact in place and the storage never changes
        shape; None grows storage as needed and reallocates at every eviction."""
        if n_up <= 0 or n_up % 16:
            raise ValueError(f"n_up must be a positive multiple of 16 (the STFT hop), got {n_up}")
        text_config = config.get_text_config(decoder=True)
        self.config = config
        self.policy = policy
        self.n_up = n_up
        self.start_accounting()
        self.rope_inv_freq = None if rope_inv_freq is None else rope_inv_freq.detach().float()
        self.rope_base = 0
        self.capacity = capacity if policy.evicts else None
        self.regrowths = 0  # times a layer outgrew `capacity` (and was reallocated)
        # what the policy reads besides the cache (namm/signals.py); one that reads the logits
        # defers the updates to `after_forward`
        self.signals: list[Signal] = policy.make_signals(n_up)
        self.defer_updates = any(signal.needs_logits for signal in self.signals)
        n_layers = text_config.num_hidden_layers
        self.kv_heads = text_config.num_key_value_heads
        self.head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        super().__init__(layers=[NammLayer(self, i) for i in range(n_layers)])

    def rope_next(self) -> int:
        """Re-indexed mode: the position the next token gets (the longest layer's length)."""
        return max(layer.length for layer in self.layers)

    def tokens_read(self) -> int:
        """Logical tokens read (what update intervals count), whatever the position mode."""
        return self.layers[0].seen

    def next_chunk(self) -> int:
        """How many tokens the next reading forward may take: up to where the next update is due,
        or, for a policy that never evicts, up to `FULL_CACHE_CHUNK` (fewer, larger forwards: a
        3,100-token document read in one forward took 0.90-0.95x the time of six 512-token chunks
        on the CPU default, which is most of the gap to transformers' own generate; the cap keeps
        the activations of one forward bounded on long documents)."""
        if not self.policy.evicts:
            return FULL_CACHE_CHUNK
        return self.n_up - (self.tokens_read() % self.n_up)

    def signal(self, name: str) -> Signal | None:
        """The policy's signal called `name` (e.g. "surprisal"), None when it reads no such thing."""
        return next((signal for signal in self.signals if signal.name == name), None)

    @property
    def wants_logits(self) -> bool:
        """Whether callers must hand every forward's logits (all positions) to `after_forward`."""
        return self.defer_updates

    def after_forward(self, input_ids: torch.Tensor, logits: torch.Tensor) -> None:
        """Every caller's one call after a forward over `input_ids` [B, T] with `logits` [B, T, V]
        (all positions when `wants_logits`, else the last one is enough): the signals observe
        it, then the updates that came due during the forward run (deferred mode)."""
        if not self.signals:
            return
        started = time.perf_counter()  # what the signals compute is the policy's work
        for signal in self.signals:
            signal.observe_forward(input_ids, logits)
        self.policy_seconds += time.perf_counter() - started
        if self.defer_updates:
            for layer in self.layers:
                if layer.since_update >= self.n_up:
                    layer.run_update()

    def flush(self) -> None:
        """Run a policy update now on every layer (e.g. once a whole document has been read)."""
        if self.policy.evicts:
            for layer in self.layers:
                layer.run_update()

    def snapshot(self) -> list[dict]:
        return [layer.export() for layer in self.layers]

    def restore(self, snap: list[dict]) -> None:
        for layer, s in zip(self.layers, snap):
            layer.load(s)
        for signal in self.signals:  # what was read after the snapshot is forgotten
            signal.truncate(self.layers[0].seen)

    def copy(self) -> "NammCache":
        """An independent copy with the same policy: every tensor cloned at the same storage
        shape (so attention over it computes exactly what it computes over this one), the
        signals' records included. What is read into the copy leaves this cache as it is.
        The work counters start at zero."""
        new = NammCache(self.config, self.policy, n_up=self.n_up, rope_inv_freq=self.rope_inv_freq,
                        capacity=self.capacity)
        for layer, source in zip(new.layers, self.layers):
            layer.load(source.export(), clone=False)
        new.signals = [signal.copy() for signal in self.signals]
        new.rope_base = self.rope_base
        return new
