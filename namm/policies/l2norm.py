"""L2 norm (Devoto et al. 2024): keys with a low L2 norm draw high attention, so keep those."""
from .base import Policy, UpdateContext


class L2Norm(Policy):
    name = "l2norm"

    def scores(self, ctx: UpdateContext):
        return -ctx.keys.float().norm(dim=-1)
