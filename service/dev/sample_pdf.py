"""Hand-built one-page PDFs for tests, benchmarks and fuzzing: real files that pypdf reads (valid
xref table), built in microseconds, so each case can carry its own."""

from __future__ import annotations


def one_page_pdf(stream: bytes, stream_dict_extra: bytes = b"") -> bytes:
    """A one-page PDF whose page content is `stream` (`stream_dict_extra`: more entries of the
    stream's dictionary, e.g. b" /Filter /FooDecode"), with Helvetica as font /F1."""
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
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n"
            "%%EOF\n").encode()
    return bytes(out)


def text_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer holds `text` (one line)."""
    return one_page_pdf(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
