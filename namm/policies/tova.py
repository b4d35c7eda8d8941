"""TOVA (Oren et al. 2024): keep the tokens the current (newest) query attends to most."""
from .base import Policy, UpdateContext


class TOVA(Policy):
    name = "tova"
    needs_attention = True
    attention_rows = 1

    def scores(self, ctx: UpdateContext):
        return ctx.attn[:, :, -1]
