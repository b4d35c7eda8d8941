"""Model text made safe to place inside the batch report's Markdown.

The model writes free Markdown; left as is, an unclosed ```` ``` ```` fence, an unclosed HTML
comment or a line like ``## Files`` in a summary would swallow or fake the report's own sections
(issue 23, item 14). Inside the text we keep code fences (closing one the model left open) and
escape, outside fences, what could start a heading or a raw-HTML block, so the report's
structure is decided by the report alone.
"""
from __future__ import annotations

import re

# CommonMark: a fence is 3+ backticks or tildes, indented at most 3 spaces.
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_ATX_HEADING = re.compile(r"^( {0,3})(#{1,6})(?=\s|$)")
_SETEXT_UNDERLINE = re.compile(r"^( {0,3})(=+|-+)\s*$")  # would turn the line above into a heading
_HTML_START = re.compile(r"^( {0,3})<")  # <!--, <pre, <script ... run until their end marker


def _closes(line: str, opener: str) -> bool:
    match = _FENCE.match(line)
    return bool(match and match.group(2)[0] == opener[0] and len(match.group(2)) >= len(opener)
                and not match.group(3).strip())


def safe_markdown(text: str) -> str:
    """`text` with its own fences closed and its headings and HTML blocks escaped."""
    out: list[str] = []
    opener: str | None = None  # the fence the text is inside, if any
    for line in text.splitlines():
        if opener is not None:
            if _closes(line, opener):
                opener = None
            out.append(line)
            continue
        fence = _FENCE.match(line)
        if fence and not (fence.group(2)[0] == "`" and "`" in fence.group(3)):
            opener = fence.group(2)
            out.append(line)
            continue
        for pattern in (_ATX_HEADING, _SETEXT_UNDERLINE, _HTML_START):
            line = pattern.sub(lambda m: m.group(1) + "\\" + m.group(0)[len(m.group(1)):], line,
                               count=1)
        out.append(line)
    if opener is not None:
        out.append(opener)
    return "\n".join(out)
