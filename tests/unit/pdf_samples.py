"""PDFs that broke pypdf in the API process (issue 13): an unknown stream filter
(NotImplementedError) and 50,000 nested '[' in a content stream (RecursionError)."""

from __future__ import annotations

from service.dev.sample_pdf import one_page_pdf

UNKNOWN_FILTER = one_page_pdf(b"BT /F1 12 Tf 72 720 Td (Hi) Tj ET", b" /Filter /FooDecode")
NESTED_ARRAYS = one_page_pdf(b"BT /F1 12 Tf 72 720 Td " + b"[" * 50_000 + b" Tj ET")
