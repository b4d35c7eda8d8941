"""Random eviction: the floor any learned or heuristic policy must beat."""
import torch

from .base import Policy, UpdateContext


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, budget=None, seed: int = 0):
        super().__init__(budget)
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, ctx: UpdateContext):
        return torch.rand(ctx.valid.shape, generator=self.generator).to(ctx.valid.device)
