"""StreamingLLM (Xiao et al. 2023): a few attention-sink tokens at the start plus a recent window."""
from .base import Policy, UpdateContext


class StreamingLLM(Policy):
    name = "streaming_llm"

    def __init__(self, budget=None, n_sinks: int = 4):
        super().__init__(budget)
        self.n_sinks = n_sinks

    def scores(self, ctx: UpdateContext):
        s = ctx.positions.float()
        return s.masked_fill(ctx.positions < self.n_sinks, float("inf"))
