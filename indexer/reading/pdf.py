"""PDF -> reading text + structure, from pymupdf's own text layer (no Markdown conversion).

Per page, `page.get_text("dict")` gives lines with their fonts, sizes, bold flags and positions.
Raw lines on one baseline (a section number and its title are often separate lines) become one
visual line. Then, per line:

- running header / footer: in the top or bottom band of the page, and either at a y position
  that carries a line on many pages or with a text (digits ignored) repeated on 3+ pages, or just
  a page number;
- table of contents / index entry: a dot-leader line, or any line of a page where most lines end
  in a page number (TOC and index pages);
- heading: matches an outline (bookmark) title on its page, or is short and all bold or larger
  than the body font; the outline gives its level, else the font size does; an FAQ entry (a bold
  "5.4." label, the question in regular type up to its "?" or the paragraph gap) is one too;
- list item: starts with a bullet or "1." / "a)"; footnote: small font at the page bottom;
  code: all monospace; else paragraph text;
- table row: a row of a ruled table (pymupdf's `page.find_tables()`, slow, so asked only on pages
  whose drawn rules sit at 3+ distinct x and 3+ distinct y positions; README has its cost);
  the text of each cell comes from the same text layer, cells joined by "; " (no `|` markup), one
  block per row.

Consecutive lines of one kind with no paragraph gap between them form one block; blocks are
joined by a blank line in the reading text, lines inside a block by a space (line-end
hyphenation of words joined). Page labels come from `page.get_label()`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import statistics
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from indexer.reading.base import Reading, TextBuilder
from schemas.errors import InputError
from schemas.structure import NON_ANSWER_KINDS, BlockKind

BAND = 0.09  # top/bottom share of the page height where running headers and footers live
MIN_REPEAT_PAGES = 3
EDGE_GAP = 1.5  # body font sizes between the text and a header / footer printed inside the text area
_ENDS_SENTENCE = re.compile(r"[.?!:;\"”’)\]]\s*$")
HEADING_MAX_WORDS = 24
BOLD = 16  # pymupdf span flag bits
MONO = 8

_DOT_LEADER = re.compile(r"(?:\.\s?){4,}|…{2,}|(?:\s\.){3,}")
# an amount, not a page number: currency, percent, thousands separator, decimals, a negative in
# parentheses, or two numbers in a row (a table's columns)
_AMOUNT = re.compile(r"[$€£¥%]|\d,\d{3}\b|\d\.\d|\(\s*\d|\d\s+\(?\d")
# a printed line that ends in two amounts / numbers in a row (a "—" may stand for zero): a table's row
# ("8.4, 7.5" in prose: a number followed by a comma is a list's, not a column's)
_NUM = r"[$€£]?\s?\(?-?\d(?:[\d,.]*\d)?\)?%?"
_ROW_END = re.compile(rf"(?<![\w.,])(?:{_NUM}|[—–])\s+{_NUM}\s*$")
PAGE_SLACK = 20  # printed page numbers may run ahead of the physical page count (front matter unnumbered)
_ENDS_IN_PAGE = re.compile(r"\s(?:\d{1,4}|[ivxlcdm]{1,7})(?:,\s*\d{1,4})*\s*$", re.IGNORECASE)
_PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?(?:\d{1,4}|[ivxlcdm]{1,7})(?:\s*(?:/|of)\s*\d{1,4})?\s*$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[•◦▪▫●○■□‣⁃∙·\-–—*]|\(?\d{1,3}[.)]|\(?[a-z][.)])\s+\S")
_FAQ_LABEL = re.compile(r"^\s*\d+(?:\.\d+)+\.?\s*$")
_SECTION_NUMBER = re.compile(r"^\s*(?:[A-Z]|\d+)(?:\.\d+)*\.?\s+")
CELL_SEPARATOR = "; "  # as the Markdown and HTML readers join cells
MIN_RULES = 3  # distinct x and y positions of drawn lines before a page is searched for tables


@dataclass
class Line:
    """One visual line: raw pymupdf lines sharing a baseline, left to right."""

    page: int  # 0-based index
    y0: float
    y1: float
    x0: float
    text: str
    size: float
    bold: bool
    mono: bool
    kind: BlockKind = "paragraph"
    level: int | None = None
    spans: list[tuple[str, float, bool, bool]] = field(default_factory=list, repr=False)

    @property
    def height(self) -> float:
        return max(self.y1 - self.y0, 1.0)


def _key(text: str) -> str:
    """Letters and digits only, lower case: how an outline title is matched with a printed line."""
    t = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in t if ch.isalnum())


Box = tuple[float, float, float, float]


@dataclass
class TableRow:
    """One row of a ruled table: its box, its cells' boxes, and per cell the text pieces found in it."""

    bbox: Box
    cells: list[Box]
    pieces: list[list[tuple[float, float, str]]] = field(default_factory=list)  # per cell: (baseline, x0, text)

    def text(self) -> str:
        """The row as reading text: each cell's lines joined, non-empty cells joined by CELL_SEPARATOR."""
        out = []
        for parts in self.pieces:
            lines: list[list[tuple[float, float, str]]] = []
            for p in sorted(parts):
                if lines and p[0] - lines[-1][0][0] < 2:  # on the same baseline (sizes may differ)
                    lines[-1].append(p)
                else:
                    lines.append([p])
            cell = ""
            for ln in lines:
                t = " ".join(" ".join(t for _, _, t in sorted(ln, key=lambda p: p[1])).split())
                cell = _join(cell, t) if cell and t else cell or t
            if cell:
                out.append(cell)
        return CELL_SEPARATOR.join(out)


def _ruled(page: object) -> bool:
    """Whether the page draws rules at MIN_RULES+ distinct x and y positions: a grid.

    Rules are lines, hairline rectangles and the edges of stroked boxes; filled boxes are not: manuals
    shade code listings in them (the Valgrind manual on 117 pages), which are no tables.
    """
    xs: set[int] = set()
    ys: set[int] = set()
    for d in page.get_drawings():  # type: ignore[attr-defined]
        stroked = d["type"] in ("s", "fs")
        for item in d["items"]:
            if item[0] == "l":
                a, b = item[1], item[2]
                if abs(a.x - b.x) < 1:
                    xs.add(round(a.x))
                if abs(a.y - b.y) < 1:
                    ys.add(round(a.y))
            elif item[0] == "re":
                r = item[1]
                if r.width < 2:
                    xs.add(round((r.x0 + r.x1) / 2))
                elif r.height < 2:
                    ys.add(round((r.y0 + r.y1) / 2))
                elif stroked:
                    xs.update((round(r.x0), round(r.x1)))
                    ys.update((round(r.y0), round(r.y1)))
    return len(xs) >= MIN_RULES and len(ys) >= MIN_RULES


def _table_rows(page: object, pno: int) -> list[TableRow]:
    """Rows of the page's ruled tables (2+ rows and 2+ columns); [] when the page draws no grid."""
    if not _ruled(page):
        return []
    try:
        found = page.find_tables()  # type: ignore[attr-defined]
    except Exception as e:  # a table finder failure costs the rows their structure, never the text
        logging.getLogger(__name__).warning("page %d: table detection failed (%s: %s)", pno + 1, type(e).__name__, e)
        return []
    rows: list[TableRow] = []
    for table in found.tables:
        if table.row_count < 2 or table.col_count < 2:
            continue
        for row in table.rows:
            cells = [tuple(c) for c in row.cells if c is not None]
            if cells:
                rows.append(TableRow(tuple(row.bbox), cells, [[] for _ in cells]))
    return rows


def _cell_of(rows: list[TableRow], x: float, y: float) -> tuple[TableRow, int] | None:
    for row in rows:
        x0, y0, x1, y1 = row.bbox
        if x0 <= x <= x1 and y0 <= y <= y1:
            for i, (cx0, cy0, cx1, cy1) in enumerate(row.cells):
                if cx0 <= x <= cx1 and cy0 <= y <= cy1:
                    return row, i
    return None


def _page_lines(page: object, pno: int, flags: int) -> list[Line]:
    raw = []
    rows = _table_rows(page, pno)
    d = page.get_text("dict", flags=flags)  # type: ignore[attr-defined]
    for b in d.get("blocks", []):
        for ln in b.get("lines", []):
            spans = [s for s in ln.get("spans", []) if s.get("text", "")]
            if rows:  # text inside a table's cells becomes that row's, not a line of its own
                spans = [s for s in spans if not _to_cell(rows, s)]
            if not any(s["text"].strip() for s in spans):
                continue
            x0, y0, _x1, y1 = ln["bbox"]
            raw.append((y0, y1, x0, spans))
    raw.sort(key=lambda r: ((r[0] + r[1]) / 2, r[2]))
    out: list[Line] = []
    groups: list[list[tuple[float, float, float, list[dict]]]] = []
    for r in raw:
        if groups:
            g = groups[-1]
            gy0, gy1 = min(x[0] for x in g), max(x[1] for x in g)
            overlap = min(gy1, r[1]) - max(gy0, r[0])
            if overlap > 0.5 * min(gy1 - gy0, r[1] - r[0]):
                g.append(r)
                continue
        groups.append([r])
    for g in groups:
        g.sort(key=lambda r: r[2])
        pieces: list[tuple[str, float, bool, bool]] = []
        for _, _, _, spans in g:
            for s in spans:
                pieces.append(
                    (
                        s["text"],
                        float(s["size"]),
                        bool(s["flags"] & BOLD) or "bold" in s["font"].lower(),
                        bool(s["flags"] & MONO),
                    )
                )
        text = ""
        for i, (t, *_rest) in enumerate(pieces):
            if i and not text.endswith((" ", "\t")) and not t.startswith((" ", "\t")):
                # separate raw lines (not spans of one line) need a space between them
                text += " " if _new_raw_line(g, i) else ""
            text += t
        text = " ".join(text.split())
        chars = Counter[tuple[float, bool, bool]]()
        for t, sz, bd, mn in pieces:
            chars[(round(sz, 1), bd, mn)] += len(t.strip())
        size = max(p[1] for p in pieces)
        letters = [p for p in pieces if any(ch.isalpha() for ch in p[0])] or pieces
        bold = all(p[2] for p in letters)
        mono = all(p[3] for p in letters)
        out.append(Line(pno, min(r[0] for r in g), max(r[1] for r in g), g[0][2], text, size, bold, mono, spans=pieces))
    if rows:
        out.extend(_row_lines(rows, pno))
        out.sort(key=lambda ln: ((ln.y0 + ln.y1) / 2, ln.x0))
    return out


def _to_cell(rows: list[TableRow], span: dict) -> bool:
    """File a span under the table cell holding its centre; False when it lies in no cell."""
    x0, y0, x1, y1 = span["bbox"]
    hit = _cell_of(rows, (x0 + x1) / 2, (y0 + y1) / 2)
    if hit is None:
        return False
    row, i = hit
    row.pieces[i].append((float(span["origin"][1]), x0, span["text"]))
    return True


def _row_lines(rows: list[TableRow], pno: int) -> list[Line]:
    """One `table_row` line per row that holds text."""
    out = []
    for row in rows:
        text = row.text()
        if text:
            x0, y0, _x1, y1 = row.bbox
            out.append(Line(pno, y0, y1, x0, text, 0.0, False, False, kind="table_row"))
    return out


def _new_raw_line(group: list[tuple[float, float, float, list[dict]]], piece_index: int) -> bool:
    """Whether piece `piece_index` of a visual line starts a new raw line."""
    n = 0
    for _, _, _, spans in group:
        if piece_index == n:
            return True
        n += len(spans)
    return False


def _body_size(lines: list[Line]) -> float:
    sizes = Counter[float]()
    for ln in lines:
        if ln.kind != "table_row":  # rows carry no font size of their own
            sizes[round(ln.size, 1)] += len(ln.text)
    return sizes.most_common(1)[0][0] if sizes else 10.0


def _shape(text: str) -> str:
    """A line as running headers repeat it: lower case, digits ignored ("page 7" and "page 8" match)."""
    return re.sub(r"\d+", "#", text.lower())


def _mark_running(pages: list[list[Line]], heights: list[float]) -> None:
    """Header/footer: lines in the top/bottom band whose position or text repeats across pages."""
    n = len(pages)
    ys: Counter[tuple[str, int]] = Counter()
    texts: Counter[tuple[str, str]] = Counter()
    banded: list[tuple[Line, str]] = []
    for lines, h in zip(pages, heights, strict=True):
        seen_y, seen_t = set(), set()
        for ln in lines:
            band = "top" if ln.y1 <= h * BAND else "bottom" if ln.y0 >= h * (1 - BAND) else ""
            if not band or ln.kind == "table_row":
                continue
            banded.append((ln, band))
            seen_y.add((band, round(ln.y0 / 2)))
            seen_t.add((band, _shape(ln.text)))
        ys.update(seen_y)
        texts.update(seen_t)
    need = max(MIN_REPEAT_PAGES, int(0.3 * n))
    for ln, band in banded:
        same_y = ys[(band, round(ln.y0 / 2))] >= need
        same_t = texts[(band, _shape(ln.text))] >= MIN_REPEAT_PAGES
        if same_y or same_t or _PAGE_NUMBER.match(ln.text):
            ln.kind = "header" if band == "top" else "footer"


def _mark_edges(pages: list[list[Line]], body: float) -> None:
    """Header/footer printed inside the text area, above the bottom band (filings printed from HTML put
    the page number at 70-77% of the page height). A page's lowest (topmost) text line is one when it is a
    page number that runs with the page index (the same printed offset on MIN_REPEAT_PAGES+ pages), or
    when it is set apart from the text by more than a paragraph gap and its text, digits ignored, is the
    lowest (topmost) line of MIN_REPEAT_PAGES+ pages. Left as text, a page number lands inside every
    paragraph that runs on over the page break."""
    # (line, edge, its shape when set apart, its printed offset from the page index when a number)
    edges: list[tuple[Line, str, str | None, int | None]] = []
    counts: Counter[tuple[str, str | int]] = Counter()
    for lines in pages:
        text = sorted((ln for ln in lines if ln.kind not in ("table_row", "header", "footer")), key=lambda ln: ln.y0)
        if len(text) < 2:
            continue
        for edge, ln, gap in (
            ("bottom", text[-1], text[-1].y0 - max(x.y1 for x in text[:-1])),
            ("top", text[0], min(x.y0 for x in text[1:]) - text[0].y1),
        ):
            shape = _shape(ln.text) if gap > EDGE_GAP * body else None
            offset = int(ln.text) - ln.page if ln.text.strip().isdigit() else None
            edges.append((ln, edge, shape, offset))
            counts.update((edge, k) for k in (shape, offset) if k is not None)
    for ln, edge, shape, offset in edges:
        if any(k is not None and counts[(edge, k)] >= MIN_REPEAT_PAGES for k in (shape, offset)):
            ln.kind = "header" if edge == "top" else "footer"


def _page_reference(text: str, n_pages: int) -> bool:
    """Whether a line ends in page references ("Troubleshooting 12", "widget, 3, 17"), not in amounts: a
    financial statement's rows ("Depreciation and amortization 1,488 1,544") end in numbers too, and a
    statement page taken for a TOC page is never answered from."""
    m = _ENDS_IN_PAGE.search(text)
    if m is None or _AMOUNT.search(text):
        return False
    numbers = re.findall(r"\d+", m.group(0))
    return all(int(n) <= n_pages + PAGE_SLACK for n in numbers)


def _mark_toc(lines: list[Line], n_pages: int) -> None:
    """TOC and index entries: dot leaders anywhere; every line of a page mostly made of page references."""
    body = [ln for ln in lines if ln.kind not in ("header", "footer", "table_row")]  # a row's numbers are data
    refs = sum(1 for ln in body if _DOT_LEADER.search(ln.text) or _page_reference(ln.text, n_pages))
    toc_page = len(body) >= 5 and refs >= 0.5 * len(body)
    for ln in body:
        if toc_page or _DOT_LEADER.search(ln.text):
            ln.kind = "toc"


def _mark_labelled(lines: list[Line], level: int, gap_limit: float) -> None:
    """FAQ-style entries: a bold "5.4." label, then the question in regular type, up to the paragraph gap."""
    for i, ln in enumerate(lines):
        first = ln.spans[0] if ln.spans else None
        if ln.kind != "paragraph" or first is None or not first[2] or not _FAQ_LABEL.match(first[0]):
            continue
        if all(p[2] for p in ln.spans if any(ch.isalpha() for ch in p[0])) or len(ln.text.split()) < 3:
            continue  # all bold: the style rule decides; a bare label: nothing to title
        ln.kind, ln.level = "heading", level
        prev = ln
        for nxt in lines[i + 1 : i + 4]:
            if nxt.kind != "paragraph" or nxt.y0 - prev.y1 > gap_limit or prev.text.rstrip().endswith("?"):
                break
            nxt.kind, nxt.level, prev = "heading", level, nxt


def _mark_headings(lines: list[Line], outline: dict[int, list[tuple[int, str]]], body: float) -> None:
    """Headings by outline title on the page first, then by style (bold / large, short, alone)."""
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.kind != "paragraph":
            i += 1
            continue
        # an outline title may run over several printed lines: try the longest run first
        matched = 0
        for j in range(min(len(lines), i + 3), i, -1):
            run = lines[i:j]
            if any(x.kind != "paragraph" for x in run):
                continue
            key = _key(" ".join(x.text for x in run))
            bare = _key(_SECTION_NUMBER.sub("", " ".join(x.text for x in run)))
            for level, title in outline.get(ln.page, []):
                tk = _key(title)
                if tk and (
                    key == tk
                    or bare == tk
                    or (key.endswith(tk) and len(key) - len(tk) <= 8 and key[: len(key) - len(tk)].isdigit())
                ):
                    for x in run:
                        x.kind, x.level = "heading", level
                    matched = j - i
                    break
            if matched:
                break
        i += matched or 1
    styled = [ln for ln in lines if ln.kind == "paragraph" and _looks_like_heading(ln, body, bool(outline))]
    if not styled:
        return
    if outline:  # the outline names the sections: a bold line it does not name is a run-in title inside one
        deepest = max(level for entries in outline.values() for level, _ in entries)
        for ln in styled:
            ln.kind, ln.level = "heading", deepest + 1
        return
    sizes = sorted({round(ln.size, 1) for ln in lines if ln.kind == "heading" or ln in styled}, reverse=True)
    for ln in styled:
        ln.kind = "heading"
        ln.level = sizes.index(round(ln.size, 1)) + 1


def _looks_like_heading(ln: Line, body: float, has_outline: bool) -> bool:
    words = len(ln.text.split())
    if words == 0 or words > HEADING_MAX_WORDS or ln.mono:
        return False
    if has_outline and _BULLET.match(ln.text) and ln.size < body * 1.15:
        return False  # "11. Escapes" in bold at body size: a list item the outline does not name
    if not any(ch.isalpha() for ch in ln.text):
        return False
    if ln.size >= body * 1.15:
        return True
    return ln.bold and not ln.text.rstrip().endswith((",", ";"))


def _mark_rest(lines: list[Line], body: float, height: float) -> None:
    for ln in lines:
        if ln.kind != "paragraph":
            continue
        if _BULLET.match(ln.text):
            ln.kind = "list_item"
        elif ln.size <= body * 0.85 and ln.y0 >= height * 0.75 and re.match(r"^\s*[\d*†‡]", ln.text):
            ln.kind = "footnote"
        elif ln.mono:
            ln.kind = "code"


def _join(a: str, b: str) -> str:
    """Join two printed lines of one block: a word hyphenated at the line end is made whole."""
    if a.endswith("-") and len(a) > 1 and a[-2].isalpha() and b[:1].islower():
        return a[:-1] + b
    return a + " " + b


def _blocks(lines: list[Line], gap_limit: float) -> list[tuple[BlockKind, str, int | None, list[Line]]]:
    """Group one page's lines into blocks: same kind, no paragraph gap, a bullet starts a new item."""
    out: list[tuple[BlockKind, str, int | None, list[Line]]] = []
    prev: Line | None = None
    for ln in lines:
        kind = ln.kind
        cont = (
            prev is not None
            and out
            and (kind == prev.kind or (prev.kind == "list_item" and kind == "paragraph" and ln.x0 > prev.x0 + 2))
            and kind not in ("toc", "header", "footer", "table_row")
            and ln.y0 - prev.y1 <= gap_limit
            and not (kind == "list_item" and _BULLET.match(ln.text))
            and not (kind == "heading" and ln.level != prev.level)
        )
        if cont:
            k, text, level, members = out[-1]
            # a statement's row ("Depreciation and amortization 1,488 1,544 1,474") ends its line: one
            # sentence per row, not one "sentence" of the whole unruled table
            row = k == "paragraph" and _ROW_END.search(members[-1].text) is not None
            joined = text + "\n" + ln.text if row else _join(text, ln.text)
            out[-1] = (k, joined, level, [*members, ln])
        else:
            out.append((kind, ln.text, ln.level, [ln]))
        prev = ln
    return out


@dataclass
class PageBlock:
    """One block as read from its page; `breaks`: (offset into text, page) where a later page starts in it."""

    kind: BlockKind
    text: str
    page: int
    level: int | None
    breaks: list[tuple[int, int]] = field(default_factory=list)

    @property
    def last_page(self) -> int:
        """The page the block ends on."""
        return self.breaks[-1][1] if self.breaks else self.page


FURNITURE: frozenset[str] = NON_ANSWER_KINDS | {"footnote"}  # what a paragraph runs on over


def _run_on(blocks: list[PageBlock]) -> list[PageBlock]:
    """Join a paragraph that runs on over a page break: the last text block of a page does not end a
    sentence and the next page's first text block is a paragraph starting in lower case. Without this,
    every such sentence is two "sentences" cut at the break, and a span stops mid-sentence. The page's
    header, footer and footnotes then follow the joined paragraph."""
    out: list[PageBlock] = []
    last: PageBlock | None = None  # the last block that is text, not furniture
    for b in blocks:
        if b.kind in FURNITURE:
            out.append(b)
            continue
        if (
            last is not None
            and b.kind == "paragraph"
            and last.kind in ("paragraph", "list_item")
            and b.page == last.last_page + 1
            and b.text[:1].islower()
            and not _ENDS_SENTENCE.search(last.text)
        ):
            joined = _join(last.text, b.text)
            last.breaks.append((len(joined) - len(b.text), b.page))
            last.text = joined
            continue
        out.append(b)
        last = b
    return out


def read_pdf(path: Path) -> Reading:
    """Reading text, page starts, title and structure of a PDF; raises InputError."""
    import pymupdf

    pymupdf.set_messages(pylogging=True)
    logging.getLogger("pymupdf").setLevel(logging.ERROR)
    try:
        doc = pymupdf.open(str(path))
    except Exception as e:  # MuPDF raises several types for damaged files
        raise InputError(
            str(path), f"cannot read PDF ({type(e).__name__}: {e}); the file is corrupt or not a PDF"
        ) from e
    with contextlib.closing(doc):
        if doc.needs_pass:
            raise InputError(
                str(path), "PDF is password-protected; decrypt it (e.g. qpdf --decrypt) and ingest it again"
            )
        flags = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_LIGATURES & ~pymupdf.TEXT_PRESERVE_IMAGES
        try:
            pages = [_page_lines(doc[i], i, flags) for i in range(doc.page_count)]
            heights = [float(doc[i].rect.height) for i in range(doc.page_count)]
            labels = [doc[i].get_label() or "" for i in range(doc.page_count)]
            toc = doc.get_toc(simple=True)
            meta_title = str((doc.metadata or {}).get("title") or "").strip()
        except Exception as e:
            raise InputError(str(path), f"cannot read PDF ({type(e).__name__}: {e}); the file is damaged") from e
    if not any(pages):
        raise InputError(
            str(path), "PDF has no extractable text (empty or scanned); run OCR on it first, then ingest it"
        )
    outline: dict[int, list[tuple[int, str]]] = {}
    for level, title, pno in toc:
        if pno >= 1:
            outline.setdefault(pno - 1, []).append((int(level), str(title)))
    every = [ln for p in pages for ln in p]
    body = _body_size(every)
    _mark_running(pages, heights)
    text_lines = [[ln for ln in p if ln.kind != "table_row"] for p in pages]
    gaps = [b.y0 - a.y1 for p in text_lines for a, b in itertools.pairwise(p) if 0 <= b.y0 - a.y1 < 3 * body]
    line_gap = statistics.median(gaps) if gaps else body * 0.3
    gap_limit = line_gap + 0.45 * body
    _mark_edges(pages, body)
    blocks: list[PageBlock] = []
    for lines, h in zip(pages, heights, strict=True):
        _mark_toc(lines, len(pages))
        _mark_headings(lines, outline, body)
        _mark_labelled(lines, max((lv for es in outline.values() for lv, _ in es), default=2) + 1, gap_limit)
        _mark_rest(lines, body, h)
        blocks.extend(PageBlock(k, t, members[0].page + 1, lv) for k, t, lv, members in _blocks(lines, gap_limit))
    builder = TextBuilder()
    for b in _run_on(blocks):
        builder.add(b.kind, b.text, page=b.page, level=b.level, page_breaks=b.breaks)
    has_labels = any(labels) and labels != [str(i + 1) for i in range(len(labels))]
    return builder.finish(path, meta_title or path.stem, n_pages=len(pages), page_labels=labels if has_labels else None)
