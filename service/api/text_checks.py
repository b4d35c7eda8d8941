"""Text every database accepts: lone surrogates and NUL are refused before anything is stored.

A JSON body may spell characters that are not text: a lone UTF-16 surrogate ("\\ud800") cannot
be encoded as UTF-8 (SQLite's driver raises UnicodeEncodeError, PostgreSQL never sees it), and
PostgreSQL's text type refuses NUL ("\\u0000"). Either, reaching the database, used to fail the
whole batch of submissions it was stored with. Client-sent text is refused with a 422 naming
the field and the character offset; text *extracted* from a file (PDF) is normalised instead
(NUL dropped, lone surrogates replaced by U+FFFD), since the client cannot edit it.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException

_SURROGATE = re.compile("[\ud800-\udfff]")


def bad_character(value: str) -> tuple[int, str] | None:
    """(offset, description) of the first character no database can store, else None."""
    nul = value.find("\x00")
    try:
        value.encode("utf-8")
        surrogate = -1
    except UnicodeEncodeError as exc:
        surrogate = exc.start
    if nul < 0 and surrogate < 0:
        return None
    if surrogate < 0 or 0 <= nul < surrogate:
        return nul, "a NUL character (U+0000)"
    return surrogate, f"a lone surrogate (U+{ord(value[surrogate]):04X})"


def check_text(field: str, value: str) -> None:
    """422 naming `field` and the offset when `value` holds NUL or a lone surrogate."""
    found = bad_character(value)
    if found is not None:
        offset, what = found
        raise HTTPException(422, f"{field}: {what} at character offset {offset}; send valid "
                                 "Unicode text without NUL characters")


def check_tree(value: Any, field: str = "body") -> None:
    """check_text over every string (and object key) of a decoded JSON value."""
    if isinstance(value, str):
        check_text(field, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(f"{field} (a key)", key)
            check_tree(item, key if field == "body" else f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_tree(item, f"{field}[{i}]")


def normalise_extracted(text: str) -> str:
    """Text extracted from a file: NUL dropped, lone surrogates replaced by U+FFFD."""
    if bad_character(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))

