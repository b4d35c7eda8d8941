"""Turn an uploaded document (plain text, Markdown, HTML or PDF bytes) into plain text.

Every failure is a DocumentError (an input error, namm.errors.InputError) carrying the HTTP
status to answer with: bad input is a 4xx with a clear message, never a 500.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from namm.errors import InputError
from service.api.text_checks import normalise_extracted

logger = logging.getLogger(__name__)

PDF_CHILD = Path(__file__).with_name("pdf_child.py")

TEXT_TYPES = {"text/plain": "text", "text/markdown": "markdown", "text/x-markdown": "markdown",
              "text/html": "html", "application/xhtml+xml": "html", "application/pdf": "pdf"}
EXTENSIONS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
              ".html": "html", ".htm": "html", ".pdf": "pdf"}
FORMATS = ("text", "markdown", "html", "pdf")


class DocumentError(InputError):
    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class ExtractedDocument:
    text: str
    format: str
    content_type: str


def detect_format(data: bytes, content_type: str | None, filename: str | None) -> str:
    """The document format from its declared type, then its file extension, then its bytes."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in TEXT_TYPES:
        return TEXT_TYPES[declared]
    if filename:
        lowered = filename.lower()
        for ext, fmt in EXTENSIONS.items():
            if lowered.endswith(ext):
                return fmt
    if data.startswith(b"%PDF-"):
        return "pdf"
    if declared in ("", "application/octet-stream") or declared.startswith("text/"):
        head = data[:512].lstrip().lower()
        return "html" if head.startswith((b"<!doctype html", b"<html")) else "text"
    raise DocumentError(
        415,
        f"unsupported document type {declared!r}: send text/plain, text/markdown, text/html "
        "or application/pdf",
    )


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16; anything else is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DocumentError(
            422, f"the document is not valid {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text "
            f"(bad byte at offset {exc.start})"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise DocumentError(422, f"the document contains NUL bytes (first at character offset "
                                 f"{nul}): it looks binary, not text")
    return text


def html_to_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line)


def pdf_to_text(data: bytes, *, timeout_s: float = 20.0, memory_mb: int = 1024) -> str:
    """The text of a PDF, parsed in a child process (service/api/pdf_child.py) bounded in
    time, memory and recursion: any failure of the parser is a 422, never this process's."""
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-I", str(PDF_CHILD), str(max(1, math.ceil(timeout_s))), str(memory_mb)]
    try:
        done = subprocess.run(argv, input=data, capture_output=True, timeout=timeout_s,
                              env={"PATH": os.environ.get("PATH", "")})
    except subprocess.TimeoutExpired:
        logger.info("PDF parse timed out after %.0f s", timeout_s)
        raise DocumentError(422, f"the PDF could not be read within {timeout_s:.0f} s") from None
    try:
        result = json.loads(done.stdout)
    except ValueError:  # killed (CPU limit: SIGXCPU; memory) or crashed before answering
        logger.info("PDF parser exited with %s: %s", done.returncode, done.stderr[-500:])
        raise DocumentError(422, "the PDF could not be read (it needs more time or memory "
                                 "than allowed, or is damaged)") from None
    if result.get("error") == "encrypted":
        raise DocumentError(422, "the PDF is encrypted; send an unencrypted file")
    if "error" in result:
        logger.info("unreadable PDF: %s", result.get("type"))
        raise DocumentError(422, "the PDF could not be read (damaged or not a PDF)")
    return normalise_extracted(result["text"])


def extract_text(data: bytes, content_type: str | None = None, filename: str | None = None,
                 *, max_bytes: int, pdf_timeout_s: float = 20.0,
                 pdf_memory_mb: int = 1024) -> ExtractedDocument:
    if not data:
        raise DocumentError(422, "the document is empty")
    if len(data) > max_bytes:
        raise DocumentError(413, f"the document is {len(data)} bytes; the limit is {max_bytes}")
    fmt = detect_format(data, content_type, filename)
    if fmt == "pdf":
        text = pdf_to_text(data, timeout_s=pdf_timeout_s, memory_mb=pdf_memory_mb)
        ctype = "application/pdf"
    else:
        text = decode_text(data)
        if fmt == "html":
            text = html_to_text(text)
        ctype = {"text": "text/plain", "markdown": "text/markdown", "html": "text/html"}[fmt]
    if not text.strip():
        raise DocumentError(422, f"no text could be extracted from the {fmt} document")
    return ExtractedDocument(text=text, format=fmt, content_type=ctype)
