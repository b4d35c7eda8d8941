"""Model text in the batch report cannot break the report's structure (issue 23, item 14).

Checked with a real CommonMark parser (markdown-it-py): the report's own sections must be the
only level-2 headings, whatever the overview and the file summaries contain."""
from datetime import datetime, timezone

from markdown_it import MarkdownIt

from service.api.batch_schemas import (AnswerOut, BatchOut, FileOut, Progress, SkippedOut,
                                       report_markdown)
from service.repos.report_text import safe_markdown


def _batch(overview: str, summary: str) -> BatchOut:
    return BatchOut(
        id="b1", status="done", source={"kind": "archive"}, schedule_id=None,
        progress=Progress(files_total=2, files_done=2, files_failed=0, files_skipped=1,
                          tokens_read=10, fraction=1.0),
        created_at=datetime(2026, 12, 1, tzinfo=timezone.utc), finished_at=None,
        tasks=["summaries", "overview"], policy="surprisal", budget=None, max_new_tokens=32,
        error=None, overview=overview, answers=[AnswerOut(question="q?", answer="## Skipped")],
        started_at=None, usage={},
        files=[FileOut(path="a.py", language="python", size_bytes=3, status="done", attempts=1,
                       tokens=5, summary=summary, error=None, job_id="j1"),
               FileOut(path="b.py", language="python", size_bytes=3, status="done", attempts=1,
                       tokens=5, summary="fine", error=None, job_id="j2")],
        skipped=[SkippedOut(path="c.bin", reason="binary")])


def _headings(md: str) -> list[tuple[str, str]]:
    tokens = MarkdownIt("commonmark").parse(md)
    return [(t.tag, tokens[i + 1].content) for i, t in enumerate(tokens)
            if t.type == "heading_open"]


def test_unclosed_fence_in_overview_does_not_swallow_files_section():
    md = report_markdown(_batch("It does this:\n```python\ndef f():\n    return 1\n", "ok"))
    h2 = [text for tag, text in _headings(md) if tag == "h2"]
    assert h2 == ["Overview", "Questions", "Files", "Skipped"]
    assert [text for tag, text in _headings(md) if tag == "h3"] == ["a.py", "b.py"]
    fences = [t for t in MarkdownIt("commonmark").parse(md) if t.type == "fence"]
    assert len(fences) == 1 and fences[0].info == "python" and "return 1" in fences[0].content


def test_injected_headings_in_model_text_stay_text():
    summary = "## Files\n### z.py\nEnd\n===\n<!-- never closed\n# Top"
    md = report_markdown(_batch("## Files\nfake", summary))
    assert [text for tag, text in _headings(md) if tag == "h2"] == [
        "Overview", "Questions", "Files", "Skipped"]
    assert [text for tag, text in _headings(md) if tag == "h3"] == ["a.py", "b.py"]
    assert not [h for h in _headings(md) if h[0] == "h1" and h[1] == "Top"]
    assert "## Files" in MarkdownIt("commonmark").render(md)  # shown literally, not dropped


def test_closed_fences_and_plain_text_are_kept_as_written():
    text = "Intro.\n\n~~~~\n## inside a fence stays as is\n```\n~~~~\nAfter."
    assert safe_markdown(text) == text
    assert safe_markdown("````md\n```\nnested\n```\n") == "````md\n```\nnested\n```\n````"
