"""Retention maps: which tokens of a document the memory still holds, shown as the document.

`retention_map(memory, n_tokens)` gives, per token position read, the share of (layer, KV head)
pairs whose cache still holds that position. It is taken from the memory as reading left it:
after the whole document was read and the final update compressed its tail, before any question
is appended. That is the memory every question starts from (`namm.ask` answers each question on
a copy of it); a question long enough to reach the next update interval may evict a little more
while it is read, which the map does not show.

`document_retention(memory, document)` turns it into a `RetentionMap`: the document's own text
cut at token boundaries (each token's piece decoded with the tokenizer, so the pieces put
together are the document exactly) with each piece's share, and `render_html` draws it as a
self-contained page on which forgotten text is faded. `read_retention` reads a document and maps
it in one call; the CLI's `namm generate --retention-html PATH` writes the page.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .memory import NammCache

# opacity of a token no head kept; a token every head kept is fully opaque
FADED = 0.25


def retention_map(memory_or_cache, n_tokens: int | None = None) -> torch.Tensor:
    """[n_tokens] float: for each token position 0..n_tokens-1, the share (0..1) of the cache's
    (layer, KV head) pairs (and batch rows) that still hold it.

    Read from the cache's validity masks and original positions (re-indexed RoPE positions leave
    these untouched). A full cache gives all ones. `memory_or_cache`: a `DocumentMemory` (the
    memory as reading left it: after the final update, before any question) or a `NammCache`;
    `n_tokens` defaults to the tokens read."""
    cache: NammCache = getattr(memory_or_cache, "cache", memory_or_cache)
    if cache is None:
        raise ValueError("this memory was handed to a single question; map it before asking")
    n = cache.tokens_read() if n_tokens is None else int(n_tokens)
    counts = torch.zeros(n, dtype=torch.float64)
    pairs = 0
    for layer in cache.layers:
        if layer.valid is None:
            continue
        valid = layer.valid[:, :, : layer.length].cpu()
        pos = layer.positions[:, :, : layer.length].cpu()
        pairs += valid.shape[0] * valid.shape[1]
        held = pos[valid & (pos < n)]
        counts += torch.bincount(held, minlength=n)[:n].to(torch.float64)
    if pairs == 0:
        return torch.zeros(n)
    return (counts / pairs).float()


def token_pieces(tokenizer, ids) -> list[str]:
    """Each token's text, such that "".join(pieces) == tokenizer.decode(ids) for byte-level
    tokenizers: a token that ends inside a multi-byte character gets "" and the character goes
    to the token that completes it."""
    pieces: list[str] = []
    pending: list[int] = []
    for tid in [int(i) for i in ids]:
        pending.append(tid)
        text = tokenizer.decode(pending, skip_special_tokens=False)
        if text.endswith("\ufffd") and len(pending) < 4:  # an incomplete UTF-8 character: wait
            pieces.append("")
            continue
        pieces.append(text)
        pending = []
    return pieces


@dataclass
class RetentionMap:
    """The document cut into token pieces, each with the share of (layer, KV head) pairs that
    still hold it once the document is read.

    pieces: the document's text per token ("".join(pieces) is the document as the memory read
      it: stripped of leading and trailing whitespace); shares: the same length, in [0, 1].
    policy, budget: what read it. tokens_read: every token the memory read (the chat template's
      tokens around the document included); kept_fraction: the share of (token, layer, head)
      entries kept over all of them (`NammCache.kept_fraction`).
    """

    pieces: list[str]
    shares: list[float]
    policy: str
    budget: float | int | None = None
    tokens_read: int = 0
    kept_fraction: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def mean_share(self) -> float:
        """The share of the document's (token, layer, head) entries kept."""
        return sum(self.shares) / len(self.shares) if self.shares else 1.0

    def to_json(self) -> list[list]:
        """[[text, share], ...] per document token (shares rounded to 4 places)."""
        return [[p, round(float(s), 4)] for p, s in zip(self.pieces, self.shares)]

    def dumps(self) -> str:
        return json.dumps({"policy": self.policy, "budget": self.budget, "tokens_read": self.tokens_read,
                           "kept_fraction": self.kept_fraction, "tokens": self.to_json()})


def document_retention(memory, document: str, question: str | None = None) -> RetentionMap:
    """The `RetentionMap` of `memory` (a `DocumentMemory` that `read_document` made from
    `document`, not yet handed to a single question; `question`: the one shown before the
    document when it was read query-aware). The prompt is encoded again as it was read; only the
    document's tokens are mapped (the chat template's header, the question shown first and the
    trailer are left out, and a token straddling them is cut to the document's text)."""
    from .prompts import document_prompt, encode_text, split_prompt

    tok = memory.lm.tokenizer
    prompt = (document_prompt(tok, document) if question is None
              else split_prompt(tok, document, question, query_aware=True).context)
    ids = encode_text(tok, prompt)[0].tolist()
    if len(ids) != memory.tokens:
        raise ValueError(f"the memory read {memory.tokens} tokens but this document's prompt has {len(ids)}: "
                         "not the document it was read from")
    shares = retention_map(memory, len(ids)).tolist()
    pieces = token_pieces(tok, ids)
    body = document.strip()
    start = len(prompt) - len(body) - 2  # document_prompt: header + document + "\n\n"
    if prompt[start: start + len(body)] != body:
        start = prompt.rfind(body)
    doc_pieces, doc_shares = [], []
    if "".join(pieces) == prompt and start >= 0:  # cut each piece to the document's characters
        end, at = start + len(body), 0
        for piece, share in zip(pieces, shares):
            lo, hi = max(at, start), min(at + len(piece), end)
            if hi > lo or (not piece and start <= at < end):
                doc_pieces.append(piece[lo - at: hi - at] if piece else "")
                doc_shares.append(share)
            at += len(piece)
    else:  # a tokenizer whose pieces do not rebuild the prompt: show every token read
        doc_pieces, doc_shares = pieces, shares
    return RetentionMap(pieces=doc_pieces, shares=doc_shares, policy=memory.policy.name, budget=memory.policy.budget,
                        tokens_read=memory.tokens, kept_fraction=memory.cache.kept_fraction())


def read_retention(lm, document: str, *, policy=None, budget=None, n_up: int = 512,
                   positions: str = "original") -> RetentionMap:
    """Read `document` with `policy` and `budget` (as `namm.read_document` takes them) and map
    what the memory kept."""
    from .document_memory import read_document
    from .spec import DEFAULT_POLICY

    memory = read_document(lm, document, policy=policy or DEFAULT_POLICY, budget=budget, n_up=n_up,
                           positions=positions)
    return document_retention(memory, document)


def _opacity(share: float) -> float:
    return FADED + share * (1.0 - FADED)


def _colour(share: float) -> str:
    """Kept text dark, forgotten text red-grey (the colour tells what opacity alone may not)."""
    r = round(170 + (17 - 170) * share)
    g = round(68 + (17 - 68) * share)
    b = round(68 + (17 - 68) * share)
    return f"#{r:02x}{g:02x}{b:02x}"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#111;background:#fff}
h1{font-size:1.3em}.summary{color:#333}.legend span{padding:0 .4em;border:1px solid #ccc;margin-right:.3em}
.doc{font-family:ui-monospace,monospace;white-space:pre-wrap;word-wrap:break-word;line-height:1.5;
border:1px solid #ddd;padding:1em;background:#fafafa}"""


def _budget_words(budget) -> str:
    if budget is None:
        return "none"
    if isinstance(budget, float) and budget <= 1.0:
        return f"{budget:g} of the tokens"
    return f"{budget} tokens per layer and head"


def render_html(retention: RetentionMap, title: str = "What the memory kept") -> str:
    """A self-contained HTML page (no external assets, no script): the document with each token
    faded by how many (layer, KV head) pairs forgot it (opacity 0.25 + share x 0.75), text
    escaped, whitespace kept; a legend and a one-line summary. Each token's share is in its
    tooltip (neighbouring tokens with the same share are drawn as one span)."""
    runs: list[list] = []  # neighbouring tokens with the same share share a span (a smaller page)
    for piece, share in zip(retention.pieces, retention.shares):
        if not piece:
            continue
        if runs and runs[-1][1] == share:
            runs[-1][0] += piece
        else:
            runs.append([piece, share])
    spans = [f'<span style="opacity:{_opacity(share):.3f};color:{_colour(share)}" '
             f'title="kept by {share:.0%} of layers and heads">{html.escape(text)}</span>' for text, share in runs]
    n = len(retention.pieces)
    whole = sum(1 for s in retention.shares if s >= 1.0)
    gone = sum(1 for s in retention.shares if s <= 0.0)
    summary = (f"{n} document tokens; {retention.mean_share:.1%} of (token, layer, head) entries kept "
               f"({whole} tokens kept by every head, {gone} forgotten by all); "
               f"policy {html.escape(str(retention.policy))}, budget {html.escape(_budget_words(retention.budget))}; "
               f"{retention.tokens_read} tokens read with the prompt, {retention.kept_fraction:.1%} kept.")
    legend = "".join(f'<span style="opacity:{_opacity(s):.3f};color:{_colour(s)}">kept by {s:.0%}</span>'
                     for s in (1.0, 0.5, 0.0))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p class=\"summary\">{summary}</p>\n"
            f"<p class=\"legend\">Legend: {legend} (share of layers and KV heads still holding the token "
            f"once the document is read, before the question)</p>\n"
            f"<div class=\"doc\">{''.join(spans)}</div>\n</body></html>\n")


def write_html(retention: RetentionMap, path: str | Path, title: str = "What the memory kept") -> Path:
    path = Path(path)
    path.write_text(render_html(retention, title=title), encoding="utf-8")
    return path


__all__ = ["retention_map", "token_pieces", "RetentionMap", "document_retention", "read_retention",
           "render_html", "write_html"]
