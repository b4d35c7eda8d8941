"""NAMM (Sakana AI, arXiv 2410.13166): a learned scorer over attention-spectrogram features decides
what each KV head forgets.

At every update the window's attention over each cached key is turned into an STFT
spectrogram (EMA over frames, frozen z-normalisation, plus a recency embedding), and the BAM
network (about 4k parameters, evolved by CMA-ES, `namm/scorer.py`) scores each token; a token is
kept if its score is >= 0, or by rank under a budget cap. Optionally the surprisal channel of
`SurprisalPolicy` (sinks, a recent window, pooled word surprisal) is added to the scorer's output.

This is the learned attention memory, and only that: `make_policy("namm")` needs a checkpoint
whose scorer is not all zero (an all-zero scorer scores every token 0 and leaves the surprisal
channel alone, which is the `surprisal` policy, not NAMM: `NoTrainedScorerError`). No such
checkpoint ships for the default model yet: the evolved scorer was evaluated on top of
surprisal and added no quality (namm/checkpoints/CARD.md). Evolution constructs `NammPolicy`
directly with its parameters (all-zero included: it is where CMA-ES starts).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import scorer
from ..features import (EMA_COEFF, HOP, N_BINS, N_FFT, RunningNorm, frame_count, frame_end_positions, scorer_inputs,
                        spectrogram_ema)
from ..fingerprints import file_hash
from .base import UpdateContext
from .surprisal import SurprisalPolicy


class NammPolicy(SurprisalPolicy):
    """The learned attention memory: BAM scores over attention spectrograms, plus (optionally)
    the surprisal channel and the sinks/recent window of `SurprisalPolicy`.

    Args:
        params: the scorer's flat parameters (`num_params()` floats); None = all zero (keeps
            everything under the threshold; where evolution starts).
        budget: cap per layer and KV head (fraction or token count); None = the threshold alone.
        norm: the spectrogram normalisation (a frozen `RunningNorm` when loaded from a file).
        threshold: keep tokens scoring >= 0 (the paper's rule); False = rank-only under the cap.
        rows: recompute only the newest `rows` window queries (a multiple of the STFT hop, >= n_fft).
        block: BAM's backward attention stays within blocks of `block` newest-first tokens.
        sinks, recent, surprise, surprise_pool, min_keep, surprise_mix, surprise_close,
        word_starts: the surprisal channel and windows, as in `SurprisalPolicy` (all off by default).
    """

    name = "namm"
    label = "NAMM"
    needs_attention = True

    def __init__(self, params=None, budget=None, norm: RunningNorm | None = None, threshold: bool = True,
                 rows: int | None = None, block: int | None = None, sinks: int = 0, recent: float = 0.0,
                 surprise: float = 0.0, surprise_pool: int = 33, min_keep: int = 0,
                 surprise_mix: dict[str, float] | None = None, surprise_close: int = 1,
                 word_starts: torch.Tensor | None = None):
        super().__init__(budget, threshold=threshold, sinks=sinks, recent=recent, surprise=surprise,
                         surprise_pool=surprise_pool, min_keep=min_keep, surprise_mix=surprise_mix,
                         surprise_close=surprise_close, word_starts=word_starts)
        # rows: recompute only the newest `rows` window queries (None = the whole window); the EMA
        # weighs the newest frames most, and the recomputation costs as much as the forward's own
        # attention. block: BAM's backward attention stays within blocks of `block` newest-first tokens.
        if rows is not None and (rows < N_FFT or rows % HOP):
            raise ValueError(f"rows must be a multiple of {HOP} and at least {N_FFT}, got {rows}")
        if block is not None and block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.attention_rows = rows
        self.block = block
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

    # the settings a variant may override (compare's `namm:recent=0.25:surprise_pool=33`; also scorer=zero)
    TUNABLE = {**SurprisalPolicy.TUNABLE, "rows": int, "block": int}

    @property
    def has_trained_scorer(self) -> bool:
        """False for all-zero scorer parameters: every token scores 0 and only the surprisal
        channel and windows decide (that is the `surprisal` policy, not a learned memory)."""
        return bool(self.params.any())

    @classmethod
    def from_checkpoint(cls, path: str | Path, budget="checkpoint", model_name: str | None = None) -> "NammPolicy":
        """The checkpoint as saved, scorer included even when it is all zero (evolution and the
        comparisons read such files on purpose); `make_policy("namm")` refuses a zero scorer."""
        return cls.variant(path, {}, budget=budget, model_name=model_name)

    @classmethod
    def variant(cls, path: str | Path, overrides: dict[str, str], budget="checkpoint",
                model_name: str | None = None) -> "NammPolicy":
        """The checkpoint with some settings replaced (values as text, e.g. from a command line);
        `scorer=zero` sets all-zero scorer parameters (the window and the surprisal channel
        decide: what the `surprisal` policy does, kept here for the comparisons that led to it)."""
        overrides = dict(overrides)
        scorer_choice = overrides.pop("scorer", "kept")
        if scorer_choice not in ("kept", "zero"):
            raise ValueError(f"scorer must be kept or zero, got {scorer_choice!r}")
        ckpt, b = cls.checkpoint_settings(path, overrides, budget, model_name)
        if scorer_choice == "zero":
            ckpt["params"] = torch.zeros_like(ckpt["params"])
        norm = RunningNorm.from_state_dict(ckpt["norm"])
        norm.frozen = True
        return cls(params=ckpt["params"].numpy(), norm=norm, rows=ckpt.get("rows"), block=ckpt.get("block"),
                   **cls._channel_kwargs(ckpt, b))._from_file(ckpt.get("word_starts_model"), file_hash(path))
