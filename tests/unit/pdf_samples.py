"""PDFs that broke pypdf in the API process (issue 13): an unknown stream filter
(NotImplementedError) and 50,000 nested '[' in a content stream (RecursionError)."""

from __future__ import annotations


def pdf_with_stream(stream: bytes, stream_dict_extra: bytes = b"") -> bytes:
    """A one-page PDF (valid xref) whose page content is `stream`."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + stream_dict_extra + b" >>\nstream\n"
        + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


UNKNOWN_FILTER = pdf_with_stream(b"BT /F1 12 Tf 72 720 Td (Hi) Tj ET", b" /Filter /FooDecode")
NESTED_ARRAYS = pdf_with_stream(b"BT /F1 12 Tf 72 720 Td " + b"[" * 50_000 + b" Tj ET")
