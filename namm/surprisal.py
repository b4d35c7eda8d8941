"""Each token's surprisal, -log p(token | what was read before it), from the logits of the forward
that read it: the signal NAMM's surprisal channel pools (namm/policies/namm.py)."""
from __future__ import annotations

import torch

from .signals import Signal


class SurprisalLog(Signal):
    """The surprisal of every token read, in reading order: `values` [B, tokens read] in nats.
    As a signal it fills `UpdateContext.surprisal` and `.token_ids` (the ids, for word views)."""

    name = "surprisal"
    needs_logits = True

    def __init__(self):
        self.values: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None  # [B, tokens read] the token ids, for word views
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
        self.ids = ids if self.ids is None else torch.cat([self.ids, ids], dim=1)

    def observe_forward(self, input_ids: torch.Tensor, logits: torch.Tensor) -> None:
        self.record(input_ids, logits)

    def read(self, layer, ctx) -> dict[str, torch.Tensor | None]:
        return {"surprisal": self.values, "token_ids": self.ids}

    def copy(self) -> "SurprisalLog":
        new = SurprisalLog()
        for name in ("values", "ids", "_last_logits"):
            value = getattr(self, name)
            setattr(new, name, None if value is None else value.clone())
        return new

    def state(self) -> dict[str, torch.Tensor]:
        """The record as tensors (values, ids, and the last token's logits), for a saved memory."""
        out = {"values": self.values, "ids": self.ids, "last_logits": self._last_logits}
        return {k: v for k, v in out.items() if v is not None}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.values, self.ids, self._last_logits = state.get("values"), state.get("ids"), state.get("last_logits")

    def truncate(self, tokens: int) -> None:
        """Forget the tokens read after the first `tokens` (a cache restored from a snapshot)."""
        if self.values is not None:
            self.values = self.values[:, :tokens]
            self.ids = self.ids[:, :tokens]
            self._last_logits = None  # the logits that followed token `tokens` are not kept


# ---- what a policy reads from it -------------------------------------------------------------
# A token's score from the surprisal around it, as a weighted sum of pooled views of the record.
# "max:K"    the largest surprisal within K tokens centred on the token (K odd): keeps the phrase
#            around a surprising token, not scattered pieces of it
# "mean:K"   the mean over the same window: dense novelty rather than one rare token
# "ahead:K"  the largest surprisal among the token and the K - 1 tokens after it: what leads up to
#            a surprise ("the magic number for" before the key and the number)
# "behind:K" the largest among the token and the K - 1 tokens before it: what follows a surprise
# "word:K"   the surprisal summed over each word (the information of the word, not of its pieces),
#            then max-pooled over K tokens: a 7-digit number read one digit per token carries
#            16 nats in all but only 2.3 per token, below most single tokens of a code document.
#            Needs the token ids and which tokens begin a word (the model's vocabulary).
SURPRISAL_VIEWS = ("max", "mean", "ahead", "behind", "word")


def parse_view(name: str) -> tuple[str, int]:
    """'max:65' -> ('max', 65); ValueError with the accepted forms otherwise."""
    kind, _, width = str(name).partition(":")
    if kind not in SURPRISAL_VIEWS or not width.isdigit() or int(width) < 1:
        raise ValueError(f"surprisal view {name!r}: use <{'|'.join(SURPRISAL_VIEWS)}>:<width >= 1>")
    if kind in ("max", "mean", "word") and int(width) % 2 == 0:
        raise ValueError(f"surprisal view {name!r}: a centred window has an odd width")
    return kind, int(width)


def word_sums(sur: torch.Tensor, ids: torch.Tensor, word_starts: torch.Tensor) -> torch.Tensor:
    """[B, T]: each token's word's summed surprisal; a word begins at a token that `word_starts`
    [V] marks (see word_start_table) and runs to the next one."""
    starts = word_starts.to(ids.device)[ids.clamp(0, word_starts.shape[0] - 1)]
    starts[:, 0] = True
    word = starts.long().cumsum(1) - 1  # [B, T] word index of each token
    sums = torch.zeros_like(sur).scatter_add_(1, word, sur)
    return sums.gather(1, word)


def word_start_table(tokenizer) -> torch.Tensor:
    """[V] bool: which tokens begin a word. A token begins one when its text starts with
    whitespace or punctuation; letters, digits and '_' continue the word before (identifiers and
    numbers split into pieces are one word)."""
    n = len(tokenizer)
    table = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        text = tokenizer.decode([i])
        table[i] = not text or not (text[0].isalnum() or text[0] == "_")
    return table


def surprisal_view(sur: torch.Tensor, name: str, seen: int, words: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] -> [B, T]: one pooled view of the surprisal record. A window as wide as a short text
    would pool every token to the same value (and the ties go to recency), so widths are narrowed
    to at most a seventh of what was read (full width from 7 x width tokens on)."""
    import torch.nn.functional as F

    kind, width = parse_view(name)
    if kind == "word":
        if words is None:
            raise ValueError(f"surprisal view {name!r} needs the word sums (token ids and a word table)")
        return surprisal_view(words, f"max:{width}", seen)
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


def mixed_surprisal(sur: torch.Tensor, mix: dict[str, float], seen: int,
                    words: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T]: sum over `mix` of weight x view (see SURPRISAL_VIEWS); `words` is word_sums(...)
    for word views."""
    out = torch.zeros_like(sur)
    for name, weight in mix.items():
        if weight:
            out = out + float(weight) * surprisal_view(sur, name, seen, words)
    return out


def close_spans(score: torch.Tensor, width: int) -> torch.Tensor:
    """[B, T] -> [B, T]: morphological closing of a score along the text (the max over `width`
    tokens, then the min over `width`): a dip narrower than the window between two higher stretches
    is raised to their level, while the edges of a high stretch stay where they are. A fact is
    then kept or evicted as a whole phrase, not in pieces ("narrow[-]pill[ow] ... 1186905" keeping
    the number and losing its key), without spreading into the text around it."""
    import torch.nn.functional as F

    if width <= 1:
        return score
    x = score[:, None]
    dilated = F.max_pool1d(x, width, 1, width // 2)  # max_pool pads with -inf: edges are neutral
    return -F.max_pool1d(-dilated, width, 1, width // 2)[:, 0]
