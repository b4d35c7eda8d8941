"""NAMM: an evolved scorer over attention-spectrogram features decides what each head forgets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import scorer
from ..features import (EMA_COEFF, HOP, N_BINS, N_FFT, RunningNorm, frame_count, frame_end_positions, scorer_inputs,
                        spectrogram_ema)
from ..fingerprints import file_hash
from ..spec import Budget
from ..surprisal import close_spans, mixed_surprisal, parse_view, word_sums
from .base import Policy, UpdateContext, budget_capacity


class NammPolicy(Policy):
    name = "namm"
    needs_attention = True

    def __init__(self, params=None, budget=None, norm: RunningNorm | None = None, threshold: bool = True,
                 rows: int | None = None, block: int | None = None, sinks: int = 0, recent: float = 0.0,
                 surprise: float = 0.0, surprise_pool: int = 33, min_keep: int = 0,
                 surprise_mix: dict[str, float] | None = None, surprise_close: int = 1,
                 word_starts: torch.Tensor | None = None):
        super().__init__(budget)
        # min_keep: a text shorter than this is never cut (the flush after a short document
        # would otherwise evict from a cache too small to be worth saving, and drop its facts)
        if min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {min_keep}")
        self.min_keep = int(min_keep)
        # surprise: weight of each token's surprisal (nats, max-pooled over `surprise_pool`
        # neighbouring tokens of the text) added to the scorer's output. What the model could not
        # predict is what it cannot rebuild once evicted: a planted fact, a new name, a number;
        # pooling keeps the whole phrase around the surprising token, not scattered pieces
        if surprise < 0 or surprise_pool < 1 or surprise_pool % 2 == 0:
            raise ValueError(f"surprise must be >= 0 and surprise_pool odd and >= 1, got {surprise}, {surprise_pool}")
        self.surprise = float(surprise)
        self.surprise_pool = int(surprise_pool)
        # surprise_mix: the general form, weights over pooled views of the surprisal
        # (namm/surprisal.py SURPRISAL_VIEWS, e.g. {"max:65": 1.0, "ahead:17": 0.3}), what the
        # CMA-ES over the channel searches; (surprise, surprise_pool) is {"max:<pool>": surprise}
        if surprise_mix is None:
            surprise_mix = {f"max:{self.surprise_pool}": self.surprise} if self.surprise > 0 else {}
        for view in surprise_mix:
            parse_view(view)
        self.surprise_mix = {str(k): float(v) for k, v in surprise_mix.items() if float(v) != 0.0}
        self.needs_surprisal = bool(self.surprise_mix)
        # surprise_close: close the mixed score over this many tokens (namm/surprisal.py
        # close_spans), so a phrase is kept or evicted whole; 1 = off
        if surprise_close < 1 or surprise_close % 2 == 0:
            raise ValueError(f"surprise_close must be odd and >= 1, got {surprise_close}")
        self.surprise_close = int(surprise_close)
        # word_starts: [V] bool, which tokens of the model's vocabulary begin a word
        # (namm/surprisal.py word_start_table), for the "word:K" views; stored in the checkpoint
        # because a checkpoint belongs to one model
        self.word_starts = None if word_starts is None else torch.as_tensor(word_starts, dtype=torch.bool)
        self.word_starts_model: str | None = None  # the model whose vocabulary the table is of
        self.checkpoint_sha256: str | None = None  # set when built from a checkpoint file
        if any(v.startswith("word:") for v in self.surprise_mix) and self.word_starts is None:
            raise ValueError("a word:K surprisal view needs word_starts (the model's word-start table)")
        # recent: the share of the budget cap reserved for the newest tokens (StreamingLLM's
        # window); the scorer then chooses the rest among older tokens. With sinks and a zero
        # scorer this is StreamingLLM itself, the starting point evolution can only improve on
        if not 0.0 <= recent < 1.0:
            raise ValueError(f"recent must be in [0, 1), got {recent}")
        self.recent = float(recent)
        # sinks: the first tokens are always kept, as StreamingLLM keeps its attention sinks;
        # every head pours attention there, so the scorer need not spend capacity learning it
        self.sinks = int(sinks)
        # rows: recompute only the newest `rows` window queries (None = the whole window); the EMA
        # weighs the newest frames most, and the recomputation costs as much as the forward's own
        # attention. block: BAM's backward attention stays within blocks of `block` newest-first tokens.
        if rows is not None and (rows < N_FFT or rows % HOP):
            raise ValueError(f"rows must be a multiple of {HOP} and at least {N_FFT}, got {rows}")
        if block is not None and block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.attention_rows = rows
        self.block = block
        if not threshold and self.budget is None:
            raise ValueError("NAMM without its score >= 0 threshold needs a budget to decide what to keep")
        # threshold=False: rank-only mode, the budget cap keeps the top-scoring tokens. Evolution
        # from zero parameters can then never evict more than the cap (threshold collapse).
        self.use_threshold = bool(threshold)
        if params is None:
            params = np.zeros(scorer.num_params(), dtype=np.float32)  # keeps everything
        self.set_params(params)
        self.norm = norm if norm is not None else RunningNorm()

    @staticmethod
    def num_params() -> int:
        return scorer.num_params()

    def set_params(self, params) -> None:
        flat = torch.as_tensor(np.asarray(params, dtype=np.float32)).flatten()
        self.params = flat
        self.weights = scorer.unflatten(flat)
        # all-zero parameters score every token 0: with the surprisal channel deciding, the
        # window's attention (the recomputation and its spectrogram) would be computed for nothing
        self.needs_attention = not (self.needs_surprisal and not bool(flat.any()))

    # ---- features -------------------------------------------------------------------------
    def token_features(self, ctx: UpdateContext) -> torch.Tensor:
        """[B, H, S, 25]: normalised EMA spectrogram of each slot's attention column + recency."""
        attn = ctx.attn.float()
        b, h, w, s = attn.shape
        prev_rows = ctx.slot_state("namm_prev_rows", (HOP,))           # [B, H, S, 16]
        prev_ema = ctx.slot_state("namm_ema", (N_BINS,))                # [B, H, S, 17]
        gap = ctx.n_new - w  # window rows not recomputed (rows mode): the carried rows are not adjacent
        carried = HOP if gap <= 0 else 0
        if gap > 0:
            # the EMA's clock still advances one step per token: the skipped rows, and the HOP
            # rows the carried rows would have added, decay the old state without new frames
            prev_ema = prev_ema * EMA_COEFF**(gap + HOP)
        # the query axis runs down the rows: the previous window's last 16 rows, then this one's
        lead = (-w) % HOP  # a window that is not a multiple of the hop is zero-padded in front
        rows = attn.new_zeros(b * h, lead + carried + w, s)
        if carried:
            rows[:, lead:lead + HOP] = prev_rows.reshape(b * h, s, HOP).transpose(1, 2)
        rows[:, lead + carried:] = attn.reshape(b * h, w, s)
        n_frames = frame_count(rows.shape[1])
        frame_end = frame_end_positions(ctx.seen - w, n_frames, lead + carried - HOP).to(attn.device)
        pos = ctx.positions.reshape(b * h, 1, s)
        frame_mask = (pos <= frame_end[None, :, None]).to(rows.dtype)  # a frame counts once the token exists
        # |STFT| along the query axis, EMA over frames, blockwise over slots
        ema = spectrogram_ema(rows, prev_ema.reshape(b * h, s, -1), frame_mask).reshape(b, h, s, -1)
        ctx.state["namm_ema"] = ema
        ctx.state["namm_prev_rows"] = rows[:, -HOP:].transpose(1, 2).reshape(b, h, s, HOP)
        if not self.norm.frozen:
            self.norm.update(ema[ctx.valid])
        return scorer_inputs(self.norm, ema, ctx.positions, ctx.seen)

    # ---- scoring --------------------------------------------------------------------------
    def scores(self, ctx: UpdateContext) -> torch.Tensor:
        if not self.needs_attention:  # idle scorer (see set_params): the surprisal channel alone
            out = self.pooled_surprisal(ctx)
            return out.masked_fill(self.protected(ctx.positions, ctx.seen), float("inf"))
        x = self.token_features(ctx)
        b, h, s, d = x.shape
        # order slots oldest -> newest with invalid slots first (see scorer.score_tokens)
        key = ctx.positions.masked_fill(~ctx.valid, -1).reshape(b * h, s)
        order = key.argsort(dim=-1, stable=True)
        xs = x.reshape(b * h, s, d).gather(1, order[..., None].expand(-1, -1, d))
        sc = scorer.score_tokens(xs, self.weights, block=self.block)
        out = torch.empty_like(sc).scatter_(1, order, sc).reshape(b, h, s)
        if self.needs_surprisal and ctx.surprisal is not None:
            out = out + self.pooled_surprisal(ctx)
        return out.masked_fill(self.protected(ctx.positions, ctx.seen), float("inf"))

    def pooled_surprisal(self, ctx: UpdateContext) -> torch.Tensor:
        """[B, H, S]: each slot's score from the surprisal around its position, weighted by
        `surprise_mix` (by default the max surprisal within `surprise_pool` tokens, x `surprise`)."""
        if ctx.surprisal is None:  # no logits were handed over at all
            return torch.zeros(ctx.positions.shape, device=ctx.positions.device)
        sur = ctx.surprisal.to(ctx.positions.device)
        if sur.shape[1] < ctx.seen:  # tokens read without their logits (see NammCache.after_forward)
            sur = torch.nn.functional.pad(sur, (0, ctx.seen - sur.shape[1]))
        words = None
        if self.word_starts is not None and any(v.startswith("word:") for v in self.surprise_mix):
            if ctx.token_ids is None:
                raise ValueError("word:K surprisal views need the token ids read (UpdateContext.token_ids)")
            ids = ctx.token_ids.to(sur.device)
            if ids.shape[1] < sur.shape[1]:
                ids = torch.nn.functional.pad(ids, (0, sur.shape[1] - ids.shape[1]))
            words = word_sums(sur, ids[:, : sur.shape[1]], self.word_starts)
        pooled = close_spans(mixed_surprisal(sur, self.surprise_mix, ctx.seen, words), self.surprise_close)
        b, h, s = ctx.positions.shape
        idx = ctx.positions.clamp(0, pooled.shape[1] - 1).reshape(b, h * s)
        return pooled.gather(1, idx).reshape(b, h, s)

    def protected(self, positions: torch.Tensor, seen: int) -> torch.Tensor:
        """Slots kept whatever they score: the sinks and the recent window reserved in the cap."""
        cap = budget_capacity(self.budget, seen)
        window = int(self.recent * cap) if self.recent and cap is not None else 0
        return (positions < self.sinks) | (positions >= seen - window)

    def threshold(self, ctx, scores):
        return scores >= 0 if self.use_threshold else None

    # ---- state a document memory carries ----------------------------------------------------
    def memory_state(self) -> dict[str, torch.Tensor]:
        """The normalisation's statistics while they still accumulate (frozen ones are settings)."""
        if self.norm.frozen:
            return {}
        return {"norm_mean": self.norm.mean.clone(), "norm_var": self.norm.var.clone(),
                "norm_count": torch.tensor(self.norm.count, dtype=torch.float64)}

    def load_memory_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.norm.frozen:
            return super().load_memory_state(state)
        self.norm = RunningNorm(state["norm_mean"].float().cpu(), state["norm_var"].float().cpu(),
                                float(state["norm_count"]), frozen=False)

    # ---- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"params": self.params.clone(), "norm": self.norm.state_dict(), "budget": self.budget,
                "threshold": self.use_threshold, "rows": self.attention_rows, "block": self.block,
                "sinks": self.sinks, "recent": self.recent, "surprise": self.surprise,
                "surprise_pool": self.surprise_pool, "min_keep": self.min_keep,
                "surprise_mix": dict(self.surprise_mix), "surprise_close": self.surprise_close,
                "word_starts": self.word_starts, "word_starts_model": self.word_starts_model}

    @classmethod
    def from_checkpoint(cls, path: str | Path, budget="checkpoint", model_name: str | None = None) -> "NammPolicy":
        return cls.variant(path, {}, budget=budget, model_name=model_name)

    # the settings a variant may override (compare's `namm:recent=0.25:surprise_pool=33`; also scorer=zero)
    TUNABLE = {"recent": float, "sinks": int, "surprise": float, "surprise_pool": int, "rows": int, "block": int,
               "min_keep": int, "surprise_close": int}

    @classmethod
    def variant(cls, path: str | Path, overrides: dict[str, str], budget="checkpoint",
                model_name: str | None = None) -> "NammPolicy":
        """The checkpoint with some settings replaced (values as text, e.g. from a command line);
        `scorer=zero` sets all-zero scorer parameters (the window and the surprisal channel decide)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        overrides = dict(overrides)
        scorer_choice = overrides.pop("scorer", "kept")
        if scorer_choice not in ("kept", "zero"):
            raise ValueError(f"scorer must be kept or zero, got {scorer_choice!r}")
        unknown = set(overrides) - set(cls.TUNABLE)
        if unknown:
            raise ValueError(f"unknown NAMM setting(s) {sorted(unknown)}; tunable: {sorted(cls.TUNABLE)}")
        b = ckpt.get("budget") if budget == "checkpoint" else budget
        ckpt.update(cls.profile_for(ckpt, b))
        for key, text in overrides.items():
            ckpt[key] = cls.TUNABLE[key](text)
        if {"surprise", "surprise_pool"} & set(overrides):  # the scalar form replaces the mix
            ckpt["surprise_mix"] = None
        if scorer_choice == "zero":
            ckpt["params"] = torch.zeros_like(ckpt["params"])
        ckpt["surprise_mix"] = cls.words_for_model(ckpt, model_name)
        norm = RunningNorm.from_state_dict(ckpt["norm"])
        norm.frozen = True
        threshold = ckpt.get("threshold", True) or b is None  # rank-only needs a budget
        return cls(params=ckpt["params"].numpy(), budget=b, norm=norm, threshold=threshold,
                   rows=ckpt.get("rows"), block=ckpt.get("block"), sinks=ckpt.get("sinks", 0),
                   recent=ckpt.get("recent", 0.0), surprise=ckpt.get("surprise", 0.0),
                   surprise_pool=ckpt.get("surprise_pool", 33), min_keep=ckpt.get("min_keep", 0),
                   surprise_mix=ckpt.get("surprise_mix"), surprise_close=ckpt.get("surprise_close", 1),
                   word_starts=ckpt.get("word_starts"))._from_file(ckpt.get("word_starts_model"), file_hash(path))

    def _from_file(self, word_model: str | None, checkpoint_sha256: str) -> "NammPolicy":
        self.word_starts_model = word_model
        # the checkpoint file's sha256, which a saved memory's manifest records (namm/memory_file.py)
        self.checkpoint_sha256 = checkpoint_sha256
        return self

    @staticmethod
    def words_for_model(ckpt: dict, model_name: str | None) -> dict | None:
        """The checkpoint's surprisal mix for `model_name`: its word-start table belongs to the
        vocabulary of the model it was made for (`word_starts_model`); on another model (NAMMs
        transfer zero-shot) each word:K view becomes max:K, the nearest view that needs no table."""
        mix = ckpt.get("surprise_mix")
        if not mix or not any(str(v).startswith("word:") for v in mix):
            return mix
        made_for = ckpt.get("word_starts_model")
        if ckpt.get("word_starts") is not None and (model_name is None or made_for is None or model_name == made_for):
            return mix
        out: dict[str, float] = {}
        for view, weight in mix.items():
            key = "max:" + str(view)[5:] if str(view).startswith("word:") else str(view)
            out[key] = out.get(key, 0.0) + float(weight)
        return out

    @staticmethod
    def profile_for(ckpt: dict, budget) -> dict:
        """The settings a checkpoint's `profiles` give this budget: each profile is a dict of
        settings with `from_budget` (a kept fraction); the highest one at or below a fraction
        budget applies. What keeps answers at 28% is not what keeps them at 50% (chosen on
        validation per budget, see CARD.md); token budgets use the base settings."""
        parsed = Budget.coerce(budget) if budget is not None else None
        if parsed is None or parsed.unit != "fraction":
            return {}
        chosen: dict = {}
        for profile in sorted(ckpt.get("profiles") or [], key=lambda p: p["from_budget"]):
            if parsed.value >= profile["from_budget"]:
                chosen = {k: v for k, v in profile.items() if k != "from_budget"}
        return chosen

    def save(self, path: str | Path, **extra) -> None:
        torch.save({**self.state_dict(), **extra}, path)
