"""Document extraction: text, Markdown, HTML and PDF in; clear 4xx errors for bad input."""

import pytest

from service.api.documents import DocumentError, extract_text
from service.dev.sample_pdf import text_pdf

LIMIT = 10_000


def test_plain_text_and_markdown():
    doc = extract_text("Hello – world".encode(), "text/plain", None, max_bytes=LIMIT)
    assert doc.text == "Hello – world" and doc.content_type == "text/plain"
    md = extract_text(b"# Title\n\nBody", None, "notes.md", max_bytes=LIMIT)
    assert md.format == "markdown" and "Body" in md.text


def test_html_becomes_text_without_scripts():
    html = b"<html><head><style>p{}</style><script>var x=1</script></head>" \
           b"<body><h1>Report</h1><p>Revenue was <b>5</b> million.</p></body></html>"
    doc = extract_text(html, "text/html; charset=utf-8", None, max_bytes=LIMIT)
    assert "Revenue was" in doc.text and "var x" not in doc.text and "p{}" not in doc.text


def test_pdf_text_is_extracted():
    doc = extract_text(text_pdf("The vault code is 4711"), "application/pdf", "a.pdf",
                       max_bytes=LIMIT)
    assert "4711" in doc.text and doc.format == "pdf"


def test_pdf_detected_by_magic_bytes():
    doc = extract_text(text_pdf("Magic"), "application/octet-stream", None, max_bytes=LIMIT)
    assert doc.format == "pdf"


@pytest.mark.parametrize("data, ctype, status, words", [
    (b"", "text/plain", 422, "empty"),
    (b"x" * (LIMIT + 1), "text/plain", 413, "limit"),
    (b"\xff\xfeabc", "text/plain", 422, "UTF"),
    (b"caf\xe9 au lait", "text/plain", 422, "UTF-8"),
    (b"%PDF-1.4\n garbage that is not a pdf", "application/pdf", 422, "PDF"),
    (b"\x89PNG\r\n", "image/png", 415, "unsupported"),
    (b"<html><body>  </body></html>", "text/html", 422, "no text"),
])
def test_bad_documents_are_4xx(data, ctype, status, words):
    with pytest.raises(DocumentError) as info:
        extract_text(data, ctype, None, max_bytes=LIMIT)
    assert info.value.status_code == status
    assert words.lower() in info.value.message.lower()
