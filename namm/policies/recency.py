"""Recency: keep the most recent tokens."""
from .base import Policy, UpdateContext


class Recency(Policy):
    name = "recency"

    def scores(self, ctx: UpdateContext):
        return ctx.positions.float()
