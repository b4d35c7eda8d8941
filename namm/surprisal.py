"""Each token's surprisal, -log p(token | what was read before it), from the logits of the forward
that read it: the signal NAMM's surprisal channel pools (namm/policies/namm.py)."""
from __future__ import annotations

import torch


class SurprisalLog:
    """The surprisal of every token read, in reading order: `values` [B, tokens read] in nats."""

    def __init__(self):
        self.values: torch.Tensor | None = None
        self._last_logits: torch.Tensor | None = None  # [B, V] of the last token read

    def record(self, input_ids: torch.Tensor, logits: torch.Tensor) -> None:
        """Append the surprisal of `input_ids` [B, T] given the forward's `logits` [B, T, V]
        (position i predicts token i + 1; the first token uses the previous forward's last row)."""
        ids = input_ids.to(logits.device)
        prev = logits[:, :-1].float()
        s = logits.new_zeros(ids.shape, dtype=torch.float32)
        if ids.shape[1] > 1:  # logsumexp - target logit, without materialising log_softmax
            s[:, 1:] = torch.logsumexp(prev, -1) - prev.gather(-1, ids[:, 1:, None])[..., 0]
        if self._last_logits is not None:
            last = self._last_logits.float()
            s[:, 0] = torch.logsumexp(last, -1) - last.gather(-1, ids[:, :1])[:, 0]
        self._last_logits = logits[:, -1].detach()
        self.values = s if self.values is None else torch.cat([self.values, s], dim=1)

    def truncate(self, tokens: int) -> None:
        """Forget the tokens read after the first `tokens` (a cache restored from a snapshot)."""
        if self.values is not None:
            self.values = self.values[:, :tokens]
            self._last_logits = None  # the logits that followed token `tokens` are not kept
