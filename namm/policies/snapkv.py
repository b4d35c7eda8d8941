"""SnapKV (Li et al. 2024): attention from an observation window of recent queries, max-pooled."""
import torch.nn.functional as F

from .base import Policy, UpdateContext


class SnapKV(Policy):
    name = "snapkv"
    needs_attention = True

    def __init__(self, budget=None, window: int = 32, kernel: int = 7):
        super().__init__(budget)
        self.attention_rows = window
        self.kernel = kernel

    def scores(self, ctx: UpdateContext):
        votes = ctx.attn.sum(dim=2)  # [B, H, S]
        b, h, s = votes.shape
        pooled = F.max_pool1d(votes.reshape(b * h, 1, s), self.kernel, stride=1, padding=self.kernel // 2)
        return pooled.reshape(b, h, s)
