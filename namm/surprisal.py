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


# ---- what a policy reads from it -------------------------------------------------------------
# A token's score from the surprisal around it, as a weighted sum of pooled views of the record.
# "max:K"    the largest surprisal within K tokens centred on the token (K odd): keeps the phrase
#            around a surprising token, not scattered pieces of it
# "mean:K"   the mean over the same window: dense novelty rather than one rare token
# "ahead:K"  the largest surprisal among the token and the K - 1 tokens after it: what leads up to
#            a surprise ("the magic number for" before the key and the number)
# "behind:K" the largest among the token and the K - 1 tokens before it: what follows a surprise
SURPRISAL_VIEWS = ("max", "mean", "ahead", "behind")


def parse_view(name: str) -> tuple[str, int]:
    """'max:65' -> ('max', 65); ValueError with the accepted forms otherwise."""
    kind, _, width = str(name).partition(":")
    if kind not in SURPRISAL_VIEWS or not width.isdigit() or int(width) < 1:
        raise ValueError(f"surprisal view {name!r}: use <{'|'.join(SURPRISAL_VIEWS)}>:<width >= 1>")
    if kind in ("max", "mean") and int(width) % 2 == 0:
        raise ValueError(f"surprisal view {name!r}: a centred window has an odd width")
    return kind, int(width)


def surprisal_view(sur: torch.Tensor, name: str, seen: int) -> torch.Tensor:
    """[B, T] -> [B, T]: one pooled view of the surprisal record. A window as wide as a short text
    would pool every token to the same value (and the ties go to recency), so widths are narrowed
    to at most a seventh of what was read (full width from 7 x width tokens on)."""
    import torch.nn.functional as F

    kind, width = parse_view(name)
    if kind in ("max", "mean"):
        k = min(width, max(1, (seen // 7 - 1) | 1))
        if k == 1:
            return sur
        x = sur[:, None]
        if kind == "max":
            return F.max_pool1d(x, k, 1, k // 2)[:, 0]
        return F.avg_pool1d(x, k, 1, k // 2, count_include_pad=False)[:, 0]
    k = min(width, max(1, seen // 7))
    if k == 1:
        return sur
    pad = (0, k - 1) if kind == "ahead" else (k - 1, 0)  # surprisal >= 0: zero padding is neutral
    return F.max_pool1d(F.pad(sur[:, None], pad), k, 1)[:, 0]


def mixed_surprisal(sur: torch.Tensor, mix: dict[str, float], seen: int) -> torch.Tensor:
    """[B, T]: sum over `mix` of weight x view (see SURPRISAL_VIEWS)."""
    out = torch.zeros_like(sur)
    for name, weight in mix.items():
        if weight:
            out = out + float(weight) * surprisal_view(sur, name, seen)
    return out
