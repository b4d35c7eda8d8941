"""Parse one PDF in a child process: `python -I pdf_child.py CPU_S MEMORY_MB < file.pdf`.

pypdf is pure Python and trusts its input: an unknown /Filter raises NotImplementedError,
50,000 nested '[' exhaust the recursion limit, a crafted stream can loop or balloon. Run
here, the parse is bounded by CPU time (RLIMIT_CPU), address space (RLIMIT_AS) and a
recursion limit, and whatever happens the parent (service/api/documents.py) only reads one
JSON line: {"text": ...}, {"error": "encrypted"} or {"error": "unreadable", "type": ...}.
Standalone on purpose: it imports nothing from the service.
"""

from __future__ import annotations

import io
import json
import sys

RECURSION_LIMIT = 2000


def _limit(cpu_s: int, memory_mb: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.setrecursionlimit(RECURSION_LIMIT)


def parse(data: bytes) -> dict:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            return {"error": "encrypted"}
        pages = [page.extract_text() or "" for page in reader.pages]
    except BaseException as exc:  # any parser failure is the file's: RecursionError, MemoryError
        return {"error": "unreadable", "type": type(exc).__name__}
    return {"text": "\n\n".join(p.strip() for p in pages if p.strip())}


def main() -> int:
    cpu_s, memory_mb = int(sys.argv[1]), int(sys.argv[2])
    _limit(cpu_s, memory_mb)
    result = parse(sys.stdin.buffer.read())
    # ensure_ascii: lone surrogates pypdf may produce travel as escapes, never as bad bytes
    sys.stdout.write(json.dumps(result, ensure_ascii=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
