"""Retention map of the shipped memory (surprisal, budget 0.28) on the real default model
(SmolLM2-135M-Instruct, CPU), through the library and the CLI's --retention-html."""
import html
import math
import re

import pytest

import namm
from namm.retention import document_retention, render_html, retention_map

pytestmark = pytest.mark.model

# ~690 tokens: one update while reading (at 512) and the final one, both evicting
DOC = " ".join(
    f"Shipment {i} left the {['north', 'south', 'east'][i % 3]} dock with {13 * i % 71} crates of copper, "
    f"signed by clerk {['Ines', 'Otto', 'Pavel', 'Rosa'][i % 4]}." for i in range(28)
) + " The vault code is Heron-5521.\n\nCafé <script>alert(1)</script> naïve."


def test_surprisal_retention_map_and_cli_page(lm, tmp_path, monkeypatch, capsys):
    memory = namm.read_document(lm, DOC, policy="surprisal", budget=0.28)
    n = memory.tokens
    assert 550 < n < 800
    shares = retention_map(memory)
    assert shares.shape == (n,) and float(shares.min()) >= 0.0 and float(shares.max()) <= 1.0
    # the mean share over every token read counts the same entries as the cache's kept fraction
    assert shares.mean().item() == pytest.approx(memory.cache.kept_fraction(), abs=1e-6)
    # and that is the budget: the cap keeps ceil(0.28 n) tokens per layer and head, so the mean
    # is 0.28 up to the one token the rounding adds (the threshold keeps every token before the cap)
    assert abs(shares.mean().item() - math.ceil(0.28 * n) / n) < 1e-6
    assert abs(shares.mean().item() - 0.28) <= 1 / n + 1e-6
    r = document_retention(memory, DOC)
    assert r.text == DOC.strip() and max(r.shares) == 1.0 and min(r.shares) == 0.0
    # the document alone: the chat header's ~25 tokens (all kept: attention sinks and the start of
    # the text) are left out, so the document's mean is below the whole's by at most 25 / 660
    assert 0.28 - 0.05 < r.mean_share <= shares.mean().item() + 1e-6
    page = render_html(r)
    assert "<script" not in page and "&lt;" in page  # "<" is its own token: each is escaped

    from namm.cli import main

    monkeypatch.setattr(namm, "load_model", lambda path=None: lm)
    doc, out = tmp_path / "doc.txt", tmp_path / "kept.html"
    doc.write_text(DOC)
    assert main(["generate", "--file", str(doc), "--budget", "0.28", "--retention-html", str(out),
                 "--question", "What is the vault code?", "--max-new-tokens", "8", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"retention map written to {out}" in captured.err and captured.out.strip()
    written = out.read_text()
    body = re.search(r'<div class="doc">(.*)</div>', written, re.S).group(1)
    assert html.unescape(re.sub(r"<[^>]+>", "", body)) == DOC.strip()
    assert "policy surprisal" in written and "budget 0.28 of the tokens" in written
