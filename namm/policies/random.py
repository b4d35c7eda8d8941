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

    def memory_state(self):
        return {"generator": self.generator.get_state()}

    def load_memory_state(self, state):
        self.generator.set_state(state["generator"].to(torch.uint8).cpu())
