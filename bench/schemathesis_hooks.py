"""Files of the media types /openapi.json names for uploads (the multipart `file` part's
`encoding.contentType`), for schemathesis (loaded through SCHEMATHESIS_HOOKS by
bench/schemathesis_api.py). A media type says what the bytes are; schemathesis only knows
images, so it would send random bytes as "application/pdf". These send what a client that
knows the type sends: text with some words, a PDF with a text layer, real archives."""

from __future__ import annotations

import io
import tarfile
import zipfile

import schemathesis
from hypothesis import strategies as st

from service.dev.sample_pdf import text_pdf

# words and text a document can hold; NUL and lone surrogates are refused (and are no text)
WORDS = st.lists(st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True), min_size=1, max_size=40)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=200)


def _plain(words: list[str], noise: str) -> bytes:
    return (" ".join(words) + "\n" + noise).encode("utf-8")


def _html(words: list[str]) -> bytes:
    return f"<html><body><p>{' '.join(words)}</p></body></html>".encode()


def pdf(words: list[str]) -> bytes:
    """A one-page PDF whose text layer holds `words`."""
    return text_pdf(" ".join(words))


FILES = st.dictionaries(st.from_regex(r"[a-z]{1,8}\.(py|md|txt)", fullmatch=True),
                        st.binary(max_size=300), min_size=1, max_size=4)


def tar(files: dict[str, bytes], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"repo/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"repo/{name}", data)
    return buffer.getvalue()


schemathesis.openapi.media_type("text/plain", st.builds(_plain, WORDS, TEXT))
schemathesis.openapi.media_type("text/markdown",
                                st.builds(_plain, WORDS.map(lambda w: ["#", *w]), TEXT))
schemathesis.openapi.media_type("text/html", WORDS.map(_html))
schemathesis.openapi.media_type("application/pdf", WORDS.map(pdf))
schemathesis.openapi.media_type("application/gzip", FILES.map(lambda f: tar(f, "gz")))
schemathesis.openapi.media_type("application/x-tar", FILES.map(tar))
schemathesis.openapi.media_type("application/zip", FILES.map(zip_archive))
