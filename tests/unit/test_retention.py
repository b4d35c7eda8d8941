"""Retention maps (namm/retention.py) on the tiny random Llama: exact shares for the full cache and
StreamingLLM, fractional shares for a policy that evicts per head, the HTML page (escaped, the
document's text whole and in order), and the CLI's --retention-html."""
import html
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import namm
from namm.retention import (RetentionMap, document_retention, read_retention, render_html, retention_map,
                            token_pieces)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_llama import tiny_llama3  # noqa: E402

# the byte tokenizer: one token per UTF-8 byte ("é" is two), so positions are easy to count
DOC = "Line one: café <script>alert('x')</script> & more.\n\n  indented\tline two.\n" + "filler words here. " * 12


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return tiny_llama3()


def _doc_text(page: str) -> str:
    body = re.search(r'<div class="doc">(.*)</div>', page, re.S).group(1)
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def test_full_cache_keeps_every_token(tiny):
    memory = namm.read_document(tiny, DOC, policy="full", n_up=16)
    shares = retention_map(memory)
    assert shares.shape == (memory.tokens,) and bool((shares == 1.0).all())
    r = document_retention(memory, DOC)
    assert r.text == DOC.strip() and set(r.shares) == {1.0} and r.mean_share == 1.0


def test_streaming_llm_keeps_sinks_and_recent_window_exactly(tiny):
    memory = namm.read_document(tiny, DOC, policy="streaming_llm", budget=40, n_up=16)
    n = memory.tokens
    assert n > 200
    expected = torch.tensor([1.0] * 4 + [0.0] * (n - 40) + [1.0] * 36)
    assert torch.equal(retention_map(memory), expected)
    assert torch.equal(retention_map(memory.cache, n), expected)  # a cache works as well as a memory
    # the mean share is the cache's kept fraction (batch 1: the same count, the same division)
    assert retention_map(memory).mean().item() == pytest.approx(memory.cache.kept_fraction(), abs=1e-6)


def test_per_head_policy_gives_partial_shares(tiny):
    r = read_retention(tiny, DOC, policy="snapkv", budget=0.3, n_up=16)
    shares = torch.tensor(r.shares)
    assert bool(((shares >= 0) & (shares <= 1)).all())
    partial = (shares > 0) & (shares < 1)
    assert int(partial.sum()) > 0  # some heads kept a token others forgot
    # 2 layers x 2 KV heads: every share is a multiple of 1/4
    assert torch.allclose(shares * 4, (shares * 4).round())
    assert r.policy == "snapkv" and r.budget == 0.3 and r.text == DOC.strip()


def test_html_is_escaped_and_holds_the_document_in_order(tiny):
    r = read_retention(tiny, DOC, policy="streaming_llm", budget=40, n_up=16)
    page = render_html(r, title="<b>map</b>")
    # one token per byte here: "<script>" is split over spans, each "<" escaped
    assert "<script" not in page and "&lt;" in page and "&lt;b&gt;map" in page
    tags = {"!DOCTYPE", "html", "head", "meta", "title", "style", "body", "h1", "p", "span", "div"}
    assert {t.lstrip("/") for t in re.findall(r"<(/?[A-Za-z0-9!]+)", page)} <= tags
    assert _doc_text(page) == DOC.strip()  # every token's text, whitespace and newlines included
    assert "white-space:pre-wrap" in page and "http" not in page  # self-contained
    assert "opacity:0.250" in page and "opacity:1.000" in page  # forgotten text faded, kept text whole
    assert page.count("<span") == 3 + 3  # the legend's three, then sinks, forgotten middle, recent window
    assert "policy streaming_llm" in page and "budget 40 tokens" in page and "Legend" in page
    pairs = r.to_json()
    assert "".join(t for t, _ in pairs) == DOC.strip() and {s for _, s in pairs} == {0.0, 1.0}
    assert json.loads(r.dumps())["tokens"] == pairs


def test_token_pieces_rebuild_multibyte_text(tiny):
    ids = tiny.tokenizer.encode("naïve ☃ text")
    pieces = token_pieces(tiny.tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == "naïve ☃ text"


def test_render_html_of_a_hand_made_map():
    r = RetentionMap(pieces=["a", "<", "\n", "b"], shares=[1.0, 0.5, 0.0, 0.25], policy="x", budget=None,
                     tokens_read=4, kept_fraction=0.4375)
    page = render_html(r)
    assert _doc_text(page) == "a<\nb" and "43.8%" in page and "budget none" in page


def test_document_retention_refuses_another_document(tiny):
    memory = namm.read_document(tiny, DOC, policy="full", n_up=16)
    with pytest.raises(ValueError, match="not the document"):
        document_retention(memory, DOC + " more")


def test_cli_writes_the_page(tiny, tmp_path, monkeypatch, capsys):
    from namm.cli import main

    monkeypatch.setattr(namm, "load_model", lambda path=None: tiny)
    doc, out = tmp_path / "doc.txt", tmp_path / "map.html"
    doc.write_text(DOC)
    assert main(["generate", "--file", str(doc), "--policy", "streaming_llm", "--budget", "40", "--n-up", "16",
                 "--retention-html", str(out), "--no-progress"]) == 0
    assert f"retention map written to {out}" in capsys.readouterr().err
    assert _doc_text(out.read_text()) == DOC.strip()
    out.unlink()
    assert main(["generate", "--file", str(doc), "--policy", "snapkv", "--budget", "0.3", "--n-up", "16",
                 "--retention-html", str(out), "--question", "What?", "--max-new-tokens", "3", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["policy"] == "snapkv" and out.is_file()


def test_cli_refuses_retention_html_with_a_saved_memory(tmp_path, capsys):
    from namm.cli import main

    mem = tmp_path / "x.mem"
    mem.write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["generate", "--memory", str(mem), "--retention-html", str(tmp_path / "m.html"), "--question", "q"])
    assert "--retention-html" in capsys.readouterr().err


def test_a_memory_read_with_its_question_first_maps_the_document_alone(tiny):
    """A job whose question is known reads `Question: ...` before the document (query-aware):
    its map covers the document's text exactly, the question left out, and a map of the
    question-agnostic prompt is refused as another text."""
    maps = []
    request = namm.GenerationRequest(DOC, questions=("What is on line two?",), policy="streaming_llm",
                                     budget=40, n_up=16, query_aware=True, max_new_tokens=2)
    namm.generate(tiny, request, on_read=lambda memory: maps.append(
        document_retention(memory, DOC, question="What is on line two?")))
    r = maps[0]
    assert r.text == DOC.strip()
    # the sinks are the chat header and the question now: the document's first bytes are gone,
    # its last ones (the recent window) kept
    assert r.shares[0] == 0.0 and r.shares[-1] == 1.0
    with pytest.raises(ValueError, match="not the document it was read from"):
        namm.generate(tiny, request, on_read=lambda memory: document_retention(memory, DOC))
