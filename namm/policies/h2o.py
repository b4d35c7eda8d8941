"""H2O (Zhang et al. 2023): keep heavy hitters, the tokens with the most accumulated attention."""
from .base import Policy, UpdateContext


class H2O(Policy):
    name = "h2o"
    needs_attention = True

    def scores(self, ctx: UpdateContext):
        acc = ctx.slot_state("h2o_acc") + ctx.attn.sum(dim=2)
        ctx.state["h2o_acc"] = acc
        return acc
