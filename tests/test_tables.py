"""Table rows as structure (PDF, Markdown, HTML) and as answer units; every span method answers with a
section's text, never a heading alone. Real PDFs built with pymupdf, the real loader, MiniLM and an Edge store."""

from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest

from indexer.reading import load_file, read_document
from retriever.fetch import Layout
from retriever.methods.structured import answer_range
from schemas.models import LoadedDocument
from tests.support import check_offsets
from tests.test_reading import make_manual

ROWS = [  # (cells, one printed line per cell); the last cell of row 3 wraps over two lines
    ("Service", "Port", "Protocol"),
    ("Web interface", "8080", "HTTP without encryption"),
    ("Firmware updates", "9443", "HTTPS. Client certificates are required"),
    ("Remote logging", "5514", "Syslog over UDP"),
]
ROW_TEXTS = ["; ".join(r) for r in ROWS]
INTRO = "The widget listens on the network ports listed in the table below, one service per port."
AFTER = "Ports below 1024 are never used, so the widget runs without administrator rights."


def make_table_pdf(path: Path) -> Path:
    """One page: a heading, a paragraph, a ruled 4x3 table (one cell wraps), a shaded box (not a table)."""
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 80), "Network ports", fontsize=16, fontname="hebo")
    page.insert_textbox(pymupdf.Rect(72, 92, 520, 130), INTRO, fontsize=11, fontname="helv")
    xs, top, h = [72, 200, 260, 520], 140, 34
    for r, row in enumerate(ROWS):
        for c, cell in enumerate(row):
            rect = pymupdf.Rect(xs[c] + 3, top + r * h + 3, xs[c + 1] - 3, top + (r + 1) * h - 2)
            width = rect.width
            words, lines, line = cell.split(), [], ""
            for w in words:  # wrap by hand so the cell really spans two printed lines
                trial = f"{line} {w}".strip()
                if pymupdf.get_text_length(trial, fontname="helv", fontsize=10) > width - 4 and line:
                    lines.append(line)
                    line = w
                else:
                    line = trial
            lines.append(line)
            for k, ln in enumerate(lines):
                page.insert_text(
                    (rect.x0, rect.y0 + 10 + 12 * k), ln, fontsize=10, fontname="hebo" if r == 0 else "helv"
                )
    for r in range(len(ROWS) + 1):
        page.draw_line((xs[0], top + r * h), (xs[-1], top + r * h))
    for x in xs:
        page.draw_line((x, top), (x, top + len(ROWS) * h))
    y = top + len(ROWS) * h + 20
    page.insert_textbox(pymupdf.Rect(72, y, 520, y + 40), AFTER, fontsize=11, fontname="helv")
    # a shaded code box: a filled rectangle draws no rules, so no table and no second of searching
    page.draw_rect(pymupdf.Rect(72, y + 50, 520, y + 80), color=None, fill=(0.95, 0.95, 0.97))
    page.insert_text((76, y + 68), "widget --listen 8080", fontsize=10, fontname="cour")
    doc.save(path)
    return path


def _rows(text: str, blocks: list) -> list[str]:
    return [text[b.start : b.end] for b in blocks if b.kind == "table_row"]


def test_pdf_table_rows_are_blocks_with_exact_offsets(tmp_path: Path) -> None:
    d = load_file(make_table_pdf(tmp_path / "ports.pdf"), "ports.pdf")
    assert d.structure is not None
    check_offsets(d.text, d.structure)
    assert _rows(d.text, d.structure.blocks) == ROW_TEXTS  # the wrapped cell is one cell, cells split cleanly
    assert "|" not in d.text
    kinds = [(b.kind, d.text[b.start : b.end]) for b in d.structure.blocks]
    assert kinds[0] == ("heading", "Network ports") and ("paragraph", INTRO) in kinds
    assert ("paragraph", AFTER) in kinds and ("code", "widget --listen 8080") in kinds
    assert [k for k, _ in kinds].index("table_row") > kinds.index(("paragraph", INTRO))
    assert [k for k, _ in kinds][-2:] == ["paragraph", "code"], "text after the table stays after it"


def test_markdown_and_html_table_rows(tmp_path: Path) -> None:
    md = tmp_path / "ports.md"
    md.write_text(
        "# Network ports\n\n"
        + INTRO
        + "\n\n| Service | Port | Protocol |\n|---|---|---|\n"
        + "".join(f"| {' | '.join(r)} |\n" for r in ROWS[1:])
        + "\n"
        + AFTER
        + "\n"
    )
    html = tmp_path / "ports.html"
    html.write_text(
        "<h1>Network ports</h1><p>"
        + INTRO
        + "</p><table><tr><th>Service</th><th>Port</th><th>Protocol</th></tr>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in ROWS[1:])
        + "</table><p>"
        + AFTER
        + "</p>"
    )
    for path in (md, html):
        r = read_document(path)
        check_offsets(r.text, r.structure)
        assert _rows(r.text, r.structure.blocks) == ROW_TEXTS, path.name
        assert "|" not in r.text and "<" not in r.text


def test_answer_range_keeps_table_rows_whole(tmp_path: Path) -> None:
    d = load_file(make_table_pdf(tmp_path / "ports.pdf"), "ports.pdf")
    assert d.structure is not None
    lay = Layout.of(d.structure)
    row = d.text.index(ROW_TEXTS[2])
    inside = d.text.index("Client certificates")  # the row's second sentence
    assert answer_range(lay, inside, inside + 8, d.text, 0) == (row, row + len(ROW_TEXTS[2]))
    para = d.text.index(INTRO)
    assert answer_range(lay, para, para + 20, d.text, 0) == (para, para + 20)
    # only the fetched text is reachable: a row is not widened past it
    base = row + 5
    a, b = answer_range(lay, inside, inside + 8, d.text[base:], base) or (0, 0)
    assert (a, b) == (base, row + len(ROW_TEXTS[2]))


def _index(doc: LoadedDocument, tmp_path: Path, minilm, name: str, **kw: object):  # type: ignore[no-untyped-def]
    from retriever.evaluation.pdf_manuals import index_documents
    from schemas.settings import Settings

    s = Settings(store_path=tmp_path / name, device="cpu", **kw)
    assert index_documents([doc], s, minilm) == 1
    return s


@pytest.mark.parametrize("fmt", ["pdf", "md", "html"])
def test_a_query_matching_a_row_gets_the_whole_row(fmt: str, tmp_path: Path, minilm) -> None:
    from retriever import Retriever

    if fmt == "pdf":
        path = make_table_pdf(tmp_path / "ports.pdf")
    else:
        path = tmp_path / f"ports.{fmt}"
        test_markdown_and_html_table_rows(tmp_path)  # writes ports.md and ports.html
    doc = load_file(path, path.name)
    s = _index(doc, tmp_path, minilm, "store")
    with Retriever(s, embedder=minilm) as r:
        spans = r.search("Are client certificates required for firmware updates over HTTPS?", top=3).spans
    assert spans
    # the row holds two sentences ("HTTPS." ends one): the span is the row, not either sentence
    assert spans[0].text == ROW_TEXTS[2], (fmt, spans[0].text)
    assert spans[0].section == "Network ports"


FAQ = """# Widget FAQ

## Why does the widget not start?

Check that the power cable is plugged in firmly at both ends, then hold the reset button for ten seconds.

## Where are the log files kept?

The widget writes its log files to the folder named logs inside the installation folder.
"""


def test_threshold_method_never_returns_a_heading_or_navigation_alone(tmp_path: Path, minilm) -> None:
    """The threshold method's spans go through the sentence method's `answer_range`: a span over a heading
    becomes its section's answer, one over the TOC is dropped, one over body text stays as it is."""
    import numpy as np
    import torch

    from retriever import Retriever
    from retriever.methods import QueryDocs, ThresholdMethod, TokenSignal
    from retriever.spans import TokenSpans

    md = tmp_path / "faq.md"
    md.write_text(FAQ)
    manual = make_manual(tmp_path / "manual.pdf")
    for path, heading, answer in [
        (md, "Where are the log files kept?", "The widget writes its log files"),
        (manual, "2.1 Why does the widget not start?", "Check that the power cable"),
    ]:
        doc = load_file(path, path.name)
        assert doc.structure is not None
        s = _index(doc, tmp_path, minilm, f"store-{path.suffix}", span_method="threshold")
        with Retriever(s, embedder=minilm) as r:
            assert isinstance(r.method, ThresholdMethod)
            header = r.store.header(path.name)
            assert header is not None
            docs = r.fetcher.fetch({path.name: header})
            d = docs[0]

            def tokens(c0: int, c1: int, d=d) -> tuple[int, int]:  # type: ignore[no-untyped-def]
                inside = np.nonzero((d.starts >= c0) & (d.starts < c1))[0]
                return int(inside[0]), int(inside[-1])

            h0 = doc.text.rindex(heading)  # the heading, not its TOC line
            b0 = doc.text.index(answer)
            picks = [tokens(h0, h0 + len(heading)), tokens(b0, b0 + 20)]
            toc = doc.text.find(heading + " .")
            if toc >= 0:
                picks.append(tokens(toc, toc + len(heading) + 4))
            n = len(picks)
            spans = TokenSpans(
                torch.zeros(n, dtype=torch.int64),
                torch.tensor([a for a, _ in picks]),
                torch.tensor([b for _, b in picks]),
                torch.tensor([0.9 - 0.1 * i for i in range(n)]),
            )
            state = TokenSignal(spans, torch.zeros(d.n), torch.zeros(d.n), 0.0)
            out = r.method.results(state, QueryDocs(r.embed_queries([heading])[0], docs), None)
        texts = [sp.text for sp in out]
        assert texts[0].startswith(answer) and heading not in texts[0], texts  # the heading became its answer
        assert len(texts) == 2 and answer.startswith(texts[1][:10]), texts  # body text stays; the TOC line goes
        assert texts[1] == doc.text[out[1].start : out[1].end] and out[1].start == b0
        assert out[0].section is not None and out[0].section.endswith(heading)


def test_recall_leaves_the_structure_out_and_fetch_reads_it_once_per_version(tmp_path: Path, minilm) -> None:
    from retriever import Retriever

    doc = load_file(make_manual(tmp_path / "manual.pdf"), "manual.pdf")
    assert doc.structure is not None
    s = _index(doc, tmp_path, minilm, "store")
    payload = doc.structure.to_payload()
    with Retriever(s, embedder=minilm) as r:
        q = r.embed_queries(["Why does the widget not start?"])[0]
        for level in ("doc", "segment"):
            cands = r.store.recall(q, 5, level)
            assert [c.doc_id for c in cands] == ["manual.pdf"]
            assert cands[0].header.structure is None and cands[0].header.page_starts == doc.page_starts
        full = r.store.header("manual.pdf")
        assert full is not None and full.structure == payload
        assert r.fetcher.structures.misses == 0
        for query, section in [
            ("Why does the widget not start?", "2.1 Why does the widget not start?"),
            ("Where are the log files kept?", "2.2 Where are the log files kept?"),
        ]:
            top = r.search(query, top=3).spans[0]
            assert top.section is not None and top.section.endswith(section)
            assert top.page_labels is not None
        assert r.fetcher.structures.misses == 1, "read from the store once for this version"
        docs = r.fetcher.fetch({c.doc_id: c.header for c in cands})
        assert docs and all(d.layout is not None and d.layout.structure == doc.structure for d in docs)
        again = r.fetcher.fetch({c.doc_id: c.header for c in cands})
        assert again[0].layout is docs[0].layout, "parsed once for this version"
        assert r.fetcher.structures.misses == 1
        r.clear_caches()
        r.search("Where are the log files kept?", top=1)
        assert r.fetcher.structures.misses == 2
        # a whole header carries its structure: parsed from it, not read from the store again
        r.clear_caches()
        assert r.fetcher.fetch({"manual.pdf": full})[0].layout is not None
        assert r.fetcher.structures.misses == 2


def test_explain_plot_marks_table_rows(tmp_path: Path, minilm) -> None:
    from retriever import Retriever
    from retriever.cli.plots import plot_explanation, structure_token_marks

    doc = load_file(make_table_pdf(tmp_path / "ports.pdf"), "ports.pdf")
    s = _index(doc, tmp_path, minilm, "store")
    with Retriever(s, embedder=minilm) as r:
        ex = r.explain("Which port does remote logging use?", "ports.pdf")
    rows = structure_token_marks(ex).rows
    assert len(rows) == len(ROWS)
    first_tokens = [doc.text[int(ex.starts[a]) : int(ex.ends[b])] for a, b in rows]
    assert first_tokens == ROW_TEXTS
    out = plot_explanation(ex, "Which port does remote logging use?", tmp_path / "rows.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
