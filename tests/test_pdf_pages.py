"""The PDF reader across page breaks, on a real PDF through the real loader: a page number printed inside
the text area (as filings printed from HTML put it, at ~75% of the page height) is a footer, not text; a
paragraph that runs on over the page break is one paragraph, so its sentence is never cut at the break;
and a financial statement page, whose rows end in numbers, is not taken for a table of contents, and
each of its rows is a sentence of its own."""

from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest

from indexer.boundaries import sentence_ranges
from indexer.reading import load_file
from retriever.methods.base import pages_of
from tests.support import check_offsets

HEADER = "Table of Contents"
BEFORE = "The 787 program is producing at low rates and we expect to increase it in 2023."
RUN_ON = [  # one sentence printed over the break between physical pages 2 and 3
    "If production rate changes at any of our",
    "commercial aircraft assembly facilities are delayed, we may be unable to meet delivery schedules.",
]
AFTER = "Operational challenges could result in additional production delays."
ENDED = "This paragraph ends its page with a full stop."
NEXT_PAGE = "which starts in lower case after a finished paragraph, and stays a paragraph of its own."
TOC = ["Business 1", "Risk Factors 2", "Properties 3", "Legal Proceedings 3", "Financial Statements 4"]
STATEMENT = [
    "Consolidated Statement of Cash Flows",
    "(Millions) 2018 2017 2016",
    "Net income including noncontrolling interest $ 5,363 $ 4,869 $ 5,058",
    "Depreciation and amortization 1,488 1,544 1,474",
    "Company pension and postretirement contributions (370) (967) (383)",
    "Purchases of property, plant and equipment (PP&E) (1,577) (1,373) (1,420)",
    "Net cash provided by operating activities 6,439 6,240 6,662",
]


def make_filing(path: Path) -> Path:
    """Five letter pages: a TOC, three text pages and a statement page, the last four numbered 1-4 at 73%
    of the page height (inside the text area, above the bottom band) under a running header. Page 2's
    last line runs on to page 3; page 3 ends with a finished paragraph and page 4 starts in lower case."""
    doc = pymupdf.open()
    for _ in range(5):
        doc.new_page(width=612, height=792)
    pages = [doc[i] for i in range(5)]
    for i, line in enumerate(TOC):
        pages[0].insert_text((72, 120 + 16 * i), line, fontsize=10, fontname="helv")
    pages[1].insert_text((72, 100), BEFORE, fontsize=10, fontname="helv")
    pages[1].insert_text((72, 480), RUN_ON[0], fontsize=10, fontname="helv")  # the page's last text line
    pages[2].insert_text((72, 100), RUN_ON[1], fontsize=10, fontname="helv")
    pages[2].insert_text((72, 130), AFTER, fontsize=10, fontname="helv")
    pages[2].insert_text((72, 480), ENDED, fontsize=10, fontname="helv")
    pages[3].insert_text((72, 100), NEXT_PAGE, fontsize=10, fontname="helv")
    pages[3].insert_text((72, 130), "A second paragraph keeps the page's text apart from its number.", fontsize=10)
    for i, line in enumerate(STATEMENT):
        pages[4].insert_text((72, 100 + 14 * i), line, fontsize=10, fontname="helv")
    for n, pno in enumerate((1, 2, 3, 4), start=1):
        pages[pno].insert_text((72, 40), HEADER, fontsize=9, fontname="helv")
        pages[pno].insert_text((300, 580), str(n), fontsize=9, fontname="helv")  # 73% of 792: not in the band
    doc.save(path)
    return path


@pytest.fixture
def filing(tmp_path: Path) -> Path:
    return make_filing(tmp_path / "filing.pdf")


def test_page_numbers_inside_the_text_area_are_footers_and_a_sentence_runs_on(filing: Path) -> None:
    d = load_file(filing, "filing.pdf")
    assert d.structure is not None
    check_offsets(d.text, d.structure)
    blocks = [(b.kind, d.text[b.start : b.end], b.page) for b in d.structure.blocks]
    assert sorted(t for k, t, _ in blocks if k == "footer") == ["1", "2", "3", "4"]
    assert [p for k, t, p in blocks if k == "header" and t == HEADER] == [2, 3, 4, 5]

    sentence = " ".join(RUN_ON)
    paragraphs = [t for k, t, _ in blocks if k == "paragraph"]
    assert sentence in paragraphs, "the paragraph runs on over the break, without the page's number or header"
    start = d.text.index(sentence)
    assert (start, start + len(sentence)) in sentence_ranges(d.text), "one sentence, not two cut at the break"
    # page 3 starts where the run-on text does; the sentence lies on pages 2 and 3
    assert d.page_starts[2] == start + len(RUN_ON[0]) + 1
    assert pages_of(d.page_starts, start, start + len(sentence)) == [2, 3]
    assert pages_of(d.page_starts, *_range(d.text, AFTER)) == [3]
    assert pages_of(d.page_starts, *_range(d.text, BEFORE)) == [2]

    # a finished paragraph is not joined with the next page's text, even one starting in lower case
    assert ENDED in paragraphs
    assert any(t.startswith(NEXT_PAGE) for t in paragraphs)


def test_a_statement_page_is_text_and_a_table_of_contents_stays_one(filing: Path) -> None:
    d = load_file(filing, "filing.pdf")
    assert d.structure is not None
    kinds = {d.text[b.start : b.end]: b.kind for b in d.structure.blocks}
    toc = [t for t, k in kinds.items() if k == "toc"]
    assert sorted(toc) == sorted(TOC), "page references stay navigation"
    on_statement = [b for b in d.structure.blocks if b.page == 5 and b.kind not in ("header", "footer")]
    assert on_statement and all(b.kind != "toc" for b in on_statement)
    text = " ".join(d.text[b.start : b.end] for b in on_statement)
    sentences = set(sentence_ranges(d.text))
    for row in STATEMENT[2:]:
        assert row in text, "amounts are answerable text"
        assert _range(d.text, row) in sentences, "each row of the unruled table is a sentence of its own"


def _range(text: str, piece: str) -> tuple[int, int]:
    i = text.index(piece)
    return i, i + len(piece)
