"""Surprisal memory: attention sinks, a recent window, and each word's surprisal decide what stays.

This is the memory the product ships (`make_policy("surprisal")`, the service's default). It is
*not* a learned attention memory: it never computes attention or spectrograms and holds no
scorer parameters. Its settings (the surprisal views, the recent share, the sinks, the default
budget 0.28) are read from the shipped checkpoint (`namm/checkpoints/CARD.md`), where they were
chosen on validation; the NAMM attention scorer (`namm/policies/namm.py`) was evaluated on top
of it and added no quality, so it does not ship.

What the model could not predict is what it cannot rebuild once evicted: a planted fact, a new
name, a number. Surprisal (-log p of each token as the model read it, from the logits of the
forward that read it) is summed per word, pooled over neighbouring tokens so a phrase is kept
whole, and ranks the older tokens; StreamingLLM's sinks and recent window are always kept.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..fingerprints import file_hash
from ..spec import Budget
from ..surprisal import close_spans, mixed_surprisal, parse_view, word_sums
from .base import Policy, UpdateContext, budget_capacity


class SurprisalPolicy(Policy):
    """Keep the sinks, a recent window, and the older tokens whose pooled surprisal is highest.

    Args:
        budget: cap per layer and KV head (a fraction of the tokens read, or a token count);
            `make_policy("surprisal")` uses the shipped checkpoint's (0.28).
        threshold: keep only tokens scoring >= 0 before the cap (surprisal is >= 0, so this
            keeps every token and the cap decides); False = rank-only. Default True.
        sinks: the first `sinks` tokens are always kept (attention sinks). Default 0.
        recent: share of the cap reserved for the newest tokens, in [0, 1). Default 0.
        surprise, surprise_pool: the scalar form of the channel, `{"max:<pool>": surprise}`
            (weight >= 0, odd pool >= 1). Defaults 0, 33.
        surprise_mix: the general form, weights over pooled views of the surprisal
            (namm/surprisal.py SURPRISAL_VIEWS, e.g. {"word:33": 1.0, "word:1": 0.05}); replaces
            the scalar form when given.
        surprise_close: close the mixed score over this many tokens so a phrase is kept or
            evicted whole (odd, 1 = off). Default 1.
        min_keep: a text shorter than this is never cut. Default 0.
        word_starts: [V] bool, which tokens of the model's vocabulary begin a word (needed by
            the "word:K" views; stored in the checkpoint because it belongs to one model).
    """

    name = "surprisal"
    label = "surprisal"  # how messages name it
    needs_attention = False

    def __init__(self, budget=None, threshold: bool = True, sinks: int = 0, recent: float = 0.0,
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
        # neighbouring tokens of the text). Pooling keeps the whole phrase around the surprising
        # token, not scattered pieces
        if surprise < 0 or surprise_pool < 1 or surprise_pool % 2 == 0:
            raise ValueError(f"surprise must be >= 0 and surprise_pool odd and >= 1, got {surprise}, {surprise_pool}")
        self.surprise = float(surprise)
        self.surprise_pool = int(surprise_pool)
        # surprise_mix: what the CMA-ES over the channel searches; (surprise, surprise_pool) is
        # {"max:<pool>": surprise}
        if surprise_mix is None:
            surprise_mix = {f"max:{self.surprise_pool}": self.surprise} if self.surprise > 0 else {}
        for view in surprise_mix:
            parse_view(view)
        self.surprise_mix = {str(k): float(v) for k, v in surprise_mix.items() if float(v) != 0.0}
        self.needs_surprisal = bool(self.surprise_mix)
        if surprise_close < 1 or surprise_close % 2 == 0:
            raise ValueError(f"surprise_close must be odd and >= 1, got {surprise_close}")
        self.surprise_close = int(surprise_close)
        self.word_starts = None if word_starts is None else torch.as_tensor(word_starts, dtype=torch.bool)
        self.word_starts_model: str | None = None  # the model whose vocabulary the table is of
        self.checkpoint_sha256: str | None = None  # set when built from a checkpoint file
        if any(v.startswith("word:") for v in self.surprise_mix) and self.word_starts is None:
            raise ValueError("a word:K surprisal view needs word_starts (the model's word-start table)")
        # recent: the share of the budget cap reserved for the newest tokens (StreamingLLM's
        # window); the surprisal ranks the rest among older tokens
        if not 0.0 <= recent < 1.0:
            raise ValueError(f"recent must be in [0, 1), got {recent}")
        self.recent = float(recent)
        # sinks: the first tokens are always kept, as StreamingLLM keeps its attention sinks
        self.sinks = int(sinks)
        if not threshold and self.budget is None:
            raise ValueError(f"{self.label} without its score >= 0 threshold needs a budget to decide what to keep")
        # threshold=False: rank-only mode, the budget cap keeps the top-scoring tokens
        self.use_threshold = bool(threshold)

    # ---- scoring --------------------------------------------------------------------------
    def scores(self, ctx: UpdateContext) -> torch.Tensor:
        out = self.pooled_surprisal(ctx)
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

    # ---- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"budget": self.budget, "threshold": self.use_threshold, "sinks": self.sinks,
                "recent": self.recent, "surprise": self.surprise, "surprise_pool": self.surprise_pool,
                "min_keep": self.min_keep, "surprise_mix": dict(self.surprise_mix),
                "surprise_close": self.surprise_close, "word_starts": self.word_starts,
                "word_starts_model": self.word_starts_model}

    # the settings a variant may override (compare's `surprisal:recent=0.25:surprise_pool=33`)
    TUNABLE = {"recent": float, "sinks": int, "surprise": float, "surprise_pool": int, "min_keep": int,
               "surprise_close": int}

    @classmethod
    def from_checkpoint(cls, path: str | Path, budget="checkpoint", model_name: str | None = None):
        return cls.variant(path, {}, budget=budget, model_name=model_name)

    @classmethod
    def variant(cls, path: str | Path, overrides: dict[str, str], budget="checkpoint",
                model_name: str | None = None):
        """The checkpoint's surprisal settings with some replaced (values as text, e.g. from a
        command line). The checkpoint's scorer parameters, if any, are not read."""
        ckpt, b = cls.checkpoint_settings(path, overrides, budget, model_name)
        return cls(**cls._channel_kwargs(ckpt, b))._from_file(ckpt.get("word_starts_model"), file_hash(path))

    @classmethod
    def checkpoint_settings(cls, path: str | Path, overrides: dict[str, str], budget="checkpoint",
                            model_name: str | None = None) -> tuple[dict, object]:
        """(the checkpoint's dict with its budget profile and `overrides` applied, the budget)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        overrides = dict(overrides)
        unknown = set(overrides) - set(cls.TUNABLE)
        if unknown:
            raise ValueError(f"unknown {cls.label} setting(s) {sorted(unknown)}; tunable: {sorted(cls.TUNABLE)}")
        b = ckpt.get("budget") if budget == "checkpoint" else budget
        ckpt.update(cls.profile_for(ckpt, b))
        for key, text in overrides.items():
            ckpt[key] = cls.TUNABLE[key](text)
        if {"surprise", "surprise_pool"} & set(overrides):  # the scalar form replaces the mix
            ckpt["surprise_mix"] = None
        ckpt["surprise_mix"] = cls.words_for_model(ckpt, model_name)
        return ckpt, b

    @staticmethod
    def _channel_kwargs(ckpt: dict, b) -> dict:
        threshold = ckpt.get("threshold", True) or b is None  # rank-only needs a budget
        return dict(budget=b, threshold=threshold, sinks=ckpt.get("sinks", 0), recent=ckpt.get("recent", 0.0),
                    surprise=ckpt.get("surprise", 0.0), surprise_pool=ckpt.get("surprise_pool", 33),
                    min_keep=ckpt.get("min_keep", 0), surprise_mix=ckpt.get("surprise_mix"),
                    surprise_close=ckpt.get("surprise_close", 1), word_starts=ckpt.get("word_starts"))

    def _from_file(self, word_model: str | None, checkpoint_sha256: str):
        self.word_starts_model = word_model
        # the checkpoint file's sha256, which a saved memory's manifest records (namm/memory_file.py)
        self.checkpoint_sha256 = checkpoint_sha256
        return self

    @staticmethod
    def words_for_model(ckpt: dict, model_name: str | None) -> dict | None:
        """The checkpoint's surprisal mix for `model_name`: its word-start table belongs to the
        vocabulary of the model it was made for (`word_starts_model`); on another model each
        word:K view becomes max:K, the nearest view that needs no table."""
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
