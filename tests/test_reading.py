"""Readers (indexer/reading): clean reading text, exact block offsets, structure per format; and the
structure-aware spans it enables, end to end on a real PDF through the real loader, MiniLM and an Edge store."""

from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest

from indexer.discover import discover
from indexer.reading import load_file, read_document
from retriever.fetch import Layout
from retriever.methods.structured import answer_range
from schemas.structure import DocStructure
from tests.support import check_offsets

TITLE = "ACME Widget Manual"
SECTIONS = [  # (printed heading, level, physical page index, body paragraphs)
    ("1 Getting started", 1, 2, ["The widget ships in one box with a power cable and this manual."]),
    (
        "1.1 How do I install the widget?",
        2,
        2,
        [
            "Unpack the archive into a folder of your choice. Run the installer as an administrator "
            "and follow the prompts until the green light turns on.",
        ],
    ),
    ("2 Troubleshooting", 1, 3, ["Most problems come from loose cables or an old firmware version."]),
    (
        "2.1 Why does the widget not start?",
        2,
        3,
        ["Check that the power cable is plugged in firmly at both ends, then hold the reset button for ten seconds."],
    ),
    (
        "2.2 Where are the log files kept?",
        2,
        4,
        ["The widget writes its log files to the folder named logs inside the installation folder."],
    ),
]
TOC_LINES = [
    "1 Getting started . . . . . . . . . . . . . . . . . . 1",
    "1.1 How do I install the widget? . . . . . . . . . . . 1",
    "2 Troubleshooting . . . . . . . . . . . . . . . . . . . 2",
    "2.1 Why does the widget not start? . . . . . . . . . . 2",
    "2.2 Where are the log files kept? . . . . . . . . . . . 3",
]


def make_manual(path: Path) -> Path:
    """A five-page manual: title page, TOC page with dot leaders, three content pages with a running
    header and page-number footers, bold larger headings, an outline, and page labels i, ii, 1, 2, 3."""
    doc = pymupdf.open()
    for _ in range(5):
        doc.new_page()
    pages = [doc[i] for i in range(5)]  # a Page made before the next new_page() goes stale
    pages[0].insert_text((72, 200), TITLE, fontsize=24, fontname="hebo")
    pages[1].insert_text((72, 100), "Contents", fontsize=16, fontname="hebo")
    for i, line in enumerate(TOC_LINES):
        pages[1].insert_text((72, 140 + 20 * i), line, fontsize=11, fontname="helv")
    y = {2: 110.0, 3: 110.0, 4: 110.0}
    for heading, level, pno, paras in SECTIONS:
        page = pages[pno]
        page.insert_text((72, y[pno]), heading, fontsize=16 if level == 1 else 13, fontname="hebo")
        y[pno] += 14
        for para in paras:
            rect = pymupdf.Rect(72, y[pno], 520, y[pno] + 80)
            page.insert_textbox(rect, para, fontsize=11, fontname="helv")
            y[pno] += 90
    for n, pno in enumerate((2, 3, 4), start=1):
        pages[pno].insert_text((72, 40), TITLE, fontsize=9, fontname="helv")
        pages[pno].insert_text((300, 810), str(n), fontsize=9, fontname="helv")
        pages[pno].insert_text((72, y[pno] + 10), "Filler sentence for the body font of this page.", fontsize=11)
    pages[2].insert_text((90, 400), "• Keep the box for returns.", fontsize=11, fontname="helv")
    doc.set_toc([[lvl, h.split(" ", 1)[1], pno + 1] for h, lvl, pno, _ in SECTIONS])
    doc.set_page_labels(
        [
            {"startpage": 0, "prefix": "", "style": "r", "firstpagenum": 1},
            {"startpage": 2, "prefix": "", "style": "D", "firstpagenum": 1},
        ]
    )
    doc.save(path)
    return path


@pytest.fixture
def manual(tmp_path: Path) -> Path:
    return make_manual(tmp_path / "manual.pdf")


def _kinds(text: str, s: DocStructure) -> list[tuple[str, str, int]]:
    return [(b.kind, text[b.start : b.end], b.page) for b in s.blocks]


def test_pdf_structure_headings_toc_running_lines_and_labels(manual: Path) -> None:
    d = load_file(manual, "manual.pdf")
    assert d.structure is not None
    check_offsets(d.text, d.structure)
    blocks = _kinds(d.text, d.structure)
    headings = [(t, p) for k, t, p in blocks if k == "heading"]
    for h, _, pno, _ in SECTIONS:
        assert (h, pno + 1) in headings
    levels = {d.text[b.start : b.end]: b.level for b in d.structure.blocks if b.kind == "heading"}
    assert all(levels[h] == lvl for h, lvl, _, _ in SECTIONS)
    toc = [t for k, t, p in blocks if k == "toc"]
    assert len(toc) >= len(TOC_LINES) and all(p == 2 for k, _, p in blocks if k == "toc")
    assert [p for k, t, p in blocks if k == "header" and t == TITLE] == [3, 4, 5]
    assert sorted(t for k, t, _ in blocks if k == "footer") == ["1", "2", "3"]
    assert any(k == "list_item" and t.endswith(" Keep the box for returns.") and p == 3 for k, t, p in blocks)
    assert d.structure.page_labels == ["i", "ii", "1", "2", "3"]
    body = SECTIONS[1][3][0]
    assert any(k == "paragraph" and t == body for k, t, _ in blocks), "wrapped lines join into one paragraph"
    for page, start in enumerate(d.page_starts, start=1):
        assert all(b.start >= start for b in d.structure.blocks if b.page >= page)


def test_pdf_section_path_and_payload_roundtrip(manual: Path) -> None:
    d = load_file(manual, "manual.pdf")
    assert d.structure is not None
    pos = d.text.index("Unpack the archive")
    assert d.structure.section_path(pos) == "1 Getting started › 1.1 How do I install the widget?"
    back = DocStructure.from_payload(d.structure.to_payload())
    assert back == d.structure
    assert DocStructure.from_payload(None) is None and DocStructure.from_payload({"v": 999}) is None


def test_answer_range_turns_headings_into_answers_and_drops_navigation(manual: Path) -> None:
    d = load_file(manual, "manual.pdf")
    assert d.structure is not None
    lay = Layout.of(d.structure)
    h = d.text.rindex("2.1 Why does the widget not start?")
    a, b = answer_range(lay, h, h + 10, d.text, 0) or (0, 0)
    assert d.text[a:b].startswith("Check that the power cable") and "2.1" not in d.text[a:b]
    toc = d.text.index("2.1 Why does the widget not start? .")
    assert answer_range(lay, toc, toc + 5, d.text, 0) is None
    hdr = d.text.index(TITLE, d.page_starts[3])
    assert answer_range(lay, hdr, hdr + len(TITLE), d.text, 0) is None
    body = d.text.index("Check that the power cable")
    assert answer_range(lay, body, body + 30, d.text, 0) == (body, body + 30)
    # a section's answer is capped in words and ends on a sentence end
    g = d.text.rindex("1.1 How do I install")
    a, b = answer_range(lay, g, g + 5, d.text, 0, words=5) or (0, 0)
    assert d.text[a:b] == "Unpack the archive into a folder of your choice."


def test_markdown_reading_text_has_no_markup(tmp_path: Path) -> None:
    md = tmp_path / "guide.md"
    md.write_text(
        "<!-- generated -->\n# Guide\n\nIntro with **bold**, _italic_ and `code` and a [link](http://x.y).\n\n"
        "## Setup\n\n- first *step*\n- second step\n  continued\n\n| name | value |\n|---|---|\n| port | 8080 |\n\n"
        "```\nmake install\n```\n\nSetext title\n============\n\nlast words\n"
    )
    d = load_file(md, "guide.md")
    assert d.structure is not None
    check_offsets(d.text, d.structure)
    for mark in ("**", "|", "<!--", "#", "`", "](", "_italic_"):
        assert mark not in d.text
    blocks = _kinds(d.text, d.structure)
    assert ("heading", "Guide", 1) in blocks and ("heading", "Setup", 1) in blocks
    assert ("list_item", "first step", 1) in blocks and ("list_item", "second step continued", 1) in blocks
    assert ("table_row", "port; 8080", 1) in blocks and ("code", "make install", 1) in blocks
    assert ("heading", "Setext title", 1) in blocks
    assert d.title == "Guide"
    assert d.structure.section_path(d.text.index("port")) == "Guide › Setup"


def test_html_reader_blocks_and_offsets(tmp_path: Path) -> None:
    page = tmp_path / "faq.html"
    page.write_text(
        "<html><head><title>Widget FAQ</title><style>p {color: red}</style></head><body>"
        "<nav><a href='#a'>Install</a> <a href='#b'>Logs</a></nav>"
        "<h1>FAQ</h1><p>Answers to   common\nquestions.</p>"
        "<h2 id='a'>How do I install it?</h2><p>Run the <b>installer</b> &amp; follow the prompts.</p>"
        "<ul><li>Step one</li><li>Step two</li></ul>"
        "<table><tr><th>Port</th><td>8080</td></tr></table>"
        "<script>var x = 1;</script><pre>make\n  install</pre></body></html>"
    )
    assert [f.path.name for f in discover([page]).files] == ["faq.html"]  # .html is a supported suffix
    d = load_file(page, "faq.html")
    assert d.structure is not None
    check_offsets(d.text, d.structure)
    blocks = _kinds(d.text, d.structure)
    assert d.title == "Widget FAQ"
    assert ("heading", "How do I install it?", 1) in blocks
    assert ("paragraph", "Answers to common questions.", 1) in blocks
    assert ("paragraph", "Run the installer & follow the prompts.", 1) in blocks
    assert ("list_item", "Step one", 1) in blocks and ("table_row", "Port; 8080", 1) in blocks
    assert ("code", "make\n  install", 1) in blocks and ("toc", "Install Logs", 1) in blocks
    assert "var x" not in d.text and "color" not in d.text and "<" not in d.text
    lvl = {d.text[b.start : b.end]: b.level for b in d.structure.blocks if b.kind == "heading"}
    assert lvl == {"FAQ": 1, "How do I install it?": 2}


def test_text_stays_verbatim_with_paragraph_blocks(tmp_path: Path) -> None:
    raw = "First para line one\nline two.\n\n\nSecond para.\n"
    p = tmp_path / "n.txt"
    p.write_text(raw)
    r = read_document(p)
    assert r.text == raw
    assert [r.text[b.start : b.end] for b in r.structure.blocks] == ["First para line one\nline two.", "Second para."]
    assert not r.structure.has_headings


def test_spans_on_a_manual_answer_instead_of_restating_headings(manual: Path, tmp_path: Path, minilm) -> None:
    from indexer.store import open_store
    from retriever import Retriever
    from retriever.evaluation.pdf_manuals import index_documents
    from schemas.settings import Settings

    s = Settings(store_path=tmp_path / "store", device="cpu")
    doc = load_file(manual, "manual.pdf")
    assert index_documents([doc], s, minilm) == 1
    store = open_store(s.store)
    try:  # the eval's own indexing keeps the sentence vectors `chunkless index` keeps (on by default)
        [h] = store.headers().values()
        assert store.meta.sentence_vectors
        assert len(store.sentence_vectors({(h.doc_id, h.version): list(range(h.n_segments))})) > 10
    finally:
        store.close()
    with Retriever(s, embedder=minilm) as r:
        for query, answer, section, label in [
            ("How do I install the widget?", "Unpack the archive", "1.1 How do I install the widget?", "1"),
            ("Why does the widget not start?", "Check that the power cable", "2.1 Why does the widget not start?", "2"),
        ]:
            spans = r.search(query, top=5).spans
            assert spans, query
            top = spans[0]
            assert top.text.startswith(answer), (query, top.text)
            assert top.section is not None and top.section.endswith(section)
            assert top.page_labels == [label] and top.pages == [int(label) + 2]
            headings = {doc.text[b.start : b.end] for b in doc.structure.blocks if b.kind in ("heading", "toc")}
            headings |= {TITLE}
            assert all(sp.text not in headings for sp in spans), "never a bare heading, TOC line or running header"


def test_label_rows_never_overlap() -> None:
    from retriever.cli.plots import label_rows

    xs = [10.0, 12.0, 14.0, 50.0, 11.0, 90.0, 13.0]
    widths = [6.0] * len(xs)
    rows = label_rows(xs, widths, max_rows=3)
    assert rows[0] == 0 and rows[3] == 0 and rows[5] == 0  # far apart: all on the top row
    placed = [(x - w / 2, x + w / 2, r) for x, w, r in zip(xs, widths, rows, strict=True) if r is not None]
    for a0, a1, ra in placed:
        for b0, b1, rb in placed:
            if (a0, a1) != (b0, b1) and ra == rb:
                assert a1 < b0 or b1 < a0
    assert None in rows  # five labels within 8 units: three rows hold three of them, the rest are left out


def test_explain_plot_marks_sections_and_navigation(manual: Path, tmp_path: Path, minilm) -> None:
    from retriever import Retriever
    from retriever.cli.plots import plot_explanation, structure_token_marks
    from retriever.evaluation.pdf_manuals import index_documents
    from schemas.settings import Settings

    s = Settings(store_path=tmp_path / "store", device="cpu")
    index_documents([load_file(manual, "manual.pdf")], s, minilm)
    with Retriever(s, embedder=minilm) as r:
        ex = r.explain("Where are the log files kept?", "manual.pdf")
    marks = structure_token_marks(ex)
    heads, nav = marks.heads, marks.nav
    assert marks.rows == []
    assert [t for _, t in heads][-5:] == [h for h, _, _, _ in SECTIONS]
    assert len(nav) >= len(TOC_LINES) + 6  # TOC lines, 3 running headers, 3 footers
    out = plot_explanation(ex, "Where are the log files kept?", tmp_path / "x.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000


def test_eval_reads_the_pdf_benchmark_format(manual: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from retriever.cli import main

    bench = tmp_path / "bench"
    (bench / "docs").mkdir(parents=True)
    manual.rename(bench / "docs" / "manual.pdf")
    with (bench / "queries.jsonl").open("w") as f:
        for heading, _, pno, paras in SECTIONS[1:]:
            q = heading.split(" ", 1)[1]
            row = {"query_id": heading.split()[0], "query": q, "kind": "question", "doc": "manual.pdf"}
            f.write(json.dumps({**row, "gold_text": paras[0], "gold_pages": [pno + 1]}) + "\n")
    results = tmp_path / "res.jsonl"
    assert main(["eval", str(bench), "--store", str(tmp_path / "store"), "--results", str(results)]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"chunkless", "64-token chunks", "sentences"} <= set(rows)
    cells = [c.strip() for c in rows["chunkless"].split("|")[1:-1]]
    assert cells[1] == "4" and cells[2] == "1.000", table  # n, hit@1: every answer found, no heading returned
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(lines) == 4 and all(x["spans"][0]["section"] and x["spans"][0]["pages"] for x in lines)


def test_text_without_headings_gets_the_same_spans_as_without_structure(tmp_path: Path, minilm) -> None:
    """squad-like documents (no headings, no navigation) must be scored exactly as before structure existed."""
    from retriever import Retriever
    from retriever.evaluation.pdf_manuals import index_documents
    from schemas.settings import Settings

    p = tmp_path / "rivers.txt"
    p.write_text(
        "The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea.\n\n"
        "The Amazon in South America is the largest river by discharge volume of water in the world.\n\n"
        "Short.\n\nThe Danube flows through much of Central and Southeastern Europe, from the Black Forest."
    )
    with_structure = load_file(p, "rivers.txt")
    assert with_structure.structure is not None and not with_structure.structure.has_headings
    without = with_structure.model_copy(update={"structure": None})
    out = []
    for i, doc in enumerate((with_structure, without)):
        s = Settings(store_path=tmp_path / f"store{i}", device="cpu")
        index_documents([doc], s, minilm)
        with Retriever(s, embedder=minilm) as r:
            out.append(
                [(x.start, x.end, round(x.score, 6)) for x in r.search("Which river carries the most water?").spans]
            )
    assert out[0] == out[1] and out[0]
