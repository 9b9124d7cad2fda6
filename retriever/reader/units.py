"""Answer units: the pieces of text the reader scores and returns.

A span method's candidate is turned into whole units, never a piece of one:

- a **sentence** (or a run of them): a candidate is widened to the sentences it touches inside its
  block (its paragraph, for text without structure), so it never starts or stops mid-sentence; a
  "sentence" that is only a fragment (a URL, a markup remnant, fewer than `MIN_WORDS` words with
  letters) is joined to the sentence before it (after it, when it comes first);
- a **table's rows**: the rows the candidate touches, read with the table's header row (its first
  row) as `lead`: the answer is the rows, not the whole table and not its lead-in;
- **list items**: the items the candidate touches, read with the list's lead-in sentence as `lead`.

A candidate that is a table's or a list's lead-in ("The following table describes ...") also offers
the table's rows / the list's items as units of their own, so the reader can pick the row that answers.
A unit's `start`/`end` is one contiguous range of the document; `lead` (a header row or lead-in) is
shown and read with it but lies before it.

The document structure is reached only through `structure_of` (one function; where the parsed
structure lives may change).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from indexer.boundaries import sentence_ranges
from retriever.fetch import DocTokens, Layout

MIN_WORDS = 3  # a "sentence" with fewer words made of letters is a fragment: it joins its neighbour
MAX_ROWS = 24  # rows (or items) of one table (list) offered as units of their own
_WORD = re.compile(r"[^\W\d_]{2,}")
_URLISH = re.compile(r"(https?://|www\.|\S+\.(com|org|net|io|html?)\b|^[\W\d_]+$)", re.IGNORECASE)
# {(doc_id, version): [segment index, ...]} -> {(doc_id, segment): (char_start, text)}
SegmentTexts = Callable[[dict[tuple[str, str], list[int]]], dict[tuple[str, int], tuple[int, str]]]


def structure_of(d: DocTokens) -> Layout | None:
    """The parsed structure of the document a run belongs to (None: it has none)."""
    return d.layout


@dataclass
class Unit:
    """One answer unit of a query's candidate document `doc` (index into the query's docs)."""

    doc: int
    start: int  # absolute first character
    end: int  # absolute end (exclusive)
    text: str
    kind: str  # "sentences", "rows", "items", "section" or "span" (kept as the span method gave it)
    source: float  # the span method's score of the candidate it came from
    rank: int  # that candidate's rank
    lead: tuple[int, int, str] | None = None  # header row / lead-in read with it: (start, end, text)
    # the unit's neighbours in reading order (sentence before/after, row above/below), for joining
    before: tuple[int, int] | None = None
    after: tuple[int, int] | None = None
    context: str = ""  # what the reader reads before the unit's text besides its lead (a section title)
    joined: bool = False
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.doc, self.start, self.end)

    def passage(self, titles: bool = True) -> str:
        """What the reader reads: section title (when `titles`), lead (header row / lead-in), then the unit."""
        parts = [self.context if titles else "", self.lead[2] if self.lead is not None else "", self.text]
        return "\n".join(p for p in parts if p)


class DocText:
    """A run's text, widened on demand by its neighbour segments (read once, through `segment_texts`)."""

    def __init__(self, d: DocTokens, segment_texts: SegmentTexts | None) -> None:
        self.d = d
        self.base = d.char_base
        self.text = d.text
        self._fetch = segment_texts
        self._widened = False

    @property
    def end(self) -> int:
        return self.base + len(self.text)

    def widen(self) -> None:
        """Add the segments just before and after the run (once; a no-op without a store)."""
        if self._widened or self._fetch is None:
            return
        self._widened = True
        d = self.d
        want = [s for s in (d.first_segment - 1, d.first_segment + d.n_segments) if 0 <= s < d.header.n_segments]
        if not want:
            return
        got = self._fetch({(d.doc_id, d.version): want})
        prev = got.get((d.doc_id, d.first_segment - 1))
        if prev is not None and prev[0] + len(prev[1]) == self.base:
            self.base, self.text = prev[0], prev[1] + self.text
        nxt = got.get((d.doc_id, d.first_segment + d.n_segments))
        if nxt is not None and nxt[0] == self.end:
            self.text += nxt[1]

    def covers(self, a: int, b: int) -> bool:
        return self.base <= a and b <= self.end

    def get(self, a: int, b: int) -> str | None:
        """Characters [a, b) when known (widening once if needed), else None."""
        if not self.covers(a, b):
            self.widen()
        return self.text[a - self.base : b - self.base] if self.covers(a, b) else None


def is_fragment(text: str) -> bool:
    """A piece no reader should get alone: a URL or markup remnant, or under `MIN_WORDS` words of letters."""
    words = _WORD.findall(text)
    if len(words) < MIN_WORDS:
        return True
    return bool(_URLISH.search(text)) and len(words) < 2 * MIN_WORDS


def whole_sentences(text: str, base: int) -> list[tuple[int, int]]:
    """Absolute [start, end) of the sentences of `text` (which starts at `base`), fragments joined to a neighbour."""
    out: list[tuple[int, int]] = []
    pending: tuple[int, int] | None = None  # leading fragments wait for the first real sentence
    for a, b in sentence_ranges(text):
        if is_fragment(text[a:b]):
            if out:
                out[-1] = (out[-1][0], b)
            else:
                pending = (pending[0] if pending else a, b)
            continue
        if pending is not None:
            a, pending = pending[0], None
        out.append((a, b))
    if pending is not None:  # nothing but fragments: the whole piece is one unit
        out.append(pending)
    return [(base + a, base + b) for a, b in out]


def _snap(sents: list[tuple[int, int]], c0: int, c1: int) -> tuple[int, int, int, int] | None:
    """Indices [i, j] of the sentences [c0, c1) touches, as (start, end, i, j); None when it touches none."""
    touched = [k for k, (a, b) in enumerate(sents) if a < max(c1, c0 + 1) and b > c0]
    if not touched:
        return None
    i, j = touched[0], touched[-1]
    return sents[i][0], sents[j][1], i, j


def _paragraph(text: DocText, c0: int, c1: int) -> tuple[int, int]:
    """The paragraph (text between blank lines, or newlines) around [c0, c1), inside what is known."""
    t, base = text.text, text.base
    a = t.rfind("\n", 0, max(c0 - base, 0))
    b = t.find("\n", max(c1 - base, 0))
    return base + (a + 1 if a >= 0 else 0), base + (b if b >= 0 else len(t))


class UnitBuilder:
    """Builds the answer units of one query's candidates (see the module docstring).

    Args:
        docs: the query's candidate runs, as the span method saw them.
        segment_texts: reads neighbour segments' text (a unit may reach past a fetched run); None: runs only.
    """

    def __init__(self, docs: list[DocTokens], segment_texts: SegmentTexts | None) -> None:
        self.docs = docs
        self.texts = [DocText(d, segment_texts) for d in docs]

    def run_of(self, doc_id: str, c0: int, c1: int) -> int | None:
        """Index of the run of `doc_id` that holds the candidate (the first that overlaps it)."""
        best = None
        for i, d in enumerate(self.docs):
            if d.doc_id != doc_id:
                continue
            end = d.char_base + len(d.text)
            if d.char_base <= c0 < end or d.char_base < c1 <= end:
                return i
            best = i if best is None else best
        return best

    def units(self, doc: int, c0: int, c1: int, text: str, source: float, rank: int) -> list[Unit]:
        """The units of candidate [c0, c1) of run `doc` (its own first, then rows/items it leads in)."""
        layout = structure_of(self.docs[doc])
        if layout is None:
            return [self._sentences(doc, c0, c1, text, source, rank, None)]
        blocks = layout.structure.blocks
        touched = [i for i in layout.overlapping(c0, c1) if blocks[i].kind not in ("toc", "header", "footer")]
        if not touched:
            return [self._sentences(doc, c0, c1, text, source, rank, None)]
        kinds = {blocks[i].kind for i in touched}
        title = self.title_at(layout, c0)
        if kinds == {"table_row"}:
            return self._rows(doc, layout, touched[0], touched[-1], source, rank, title)
        if kinds == {"list_item"}:
            return self._items(doc, layout, touched[0], touched[-1], source, rank, title)
        # the sentences of the block(s) it touches that are not rows/items/headings
        body = [i for i in touched if blocks[i].kind not in ("table_row", "list_item", "heading")]
        if not body:  # headings with rows or items: the rows / items; headings alone: as the method cut it
            rows = [i for i in touched if blocks[i].kind in ("table_row", "list_item")]
            if not rows:
                return [Unit(doc, c0, c1, text, "span", source, rank, context=title or "")]
            make = self._rows if blocks[rows[0]].kind == "table_row" else self._items
            return make(doc, layout, rows[0], rows[0], source, rank, title)
        lo, hi = max(c0, blocks[body[0]].start), min(c1, blocks[body[-1]].end)
        out = [self._sentences(doc, lo, hi, text, source, rank, title, (blocks[body[0]].start, blocks[body[-1]].end))]
        nxt = body[-1] + 1  # a lead-in: the table or list right after it offers its rows / items
        if nxt < len(blocks) and blocks[nxt].kind in ("table_row", "list_item") and out[0].end >= blocks[body[-1]].end:
            kind = blocks[nxt].kind
            _, last = layout.run_of_kind(nxt)
            for k in range(nxt, min(last, nxt + MAX_ROWS - 1) + 1):
                sub = (self._rows if kind == "table_row" else self._items)(doc, layout, k, k, source, rank, title)
                out += sub[:1]
        return out

    # --- the unit kinds ---------------------------------------------------------------------------
    def _sentences(
        self,
        doc: int,
        c0: int,
        c1: int,
        text: str,
        source: float,
        rank: int,
        title: str | None,
        block: tuple[int, int] | None = None,
    ) -> Unit:
        dt = self.texts[doc]
        span = Unit(doc, c0, c1, text, "span", source, rank, context=title or "")
        lo, hi = block if block is not None else (c0, c1)
        if dt.get(lo, hi) is None:
            return span  # past what the store can give: the candidate as the method cut it
        if block is None:
            lo, hi = _paragraph(dt, c0, c1)
        piece = dt.get(lo, hi)
        assert piece is not None
        sents = whole_sentences(piece, lo)
        snapped = _snap(sents, c0, c1)
        if snapped is None:
            return span
        a, b, i, j = snapped
        body = dt.get(a, b)
        assert body is not None
        return Unit(
            doc,
            a,
            b,
            body,
            "sentences",
            source,
            rank,
            before=sents[i - 1] if i > 0 else None,
            after=sents[j + 1] if j + 1 < len(sents) else None,
            context=title or "",
        )

    def _rows(
        self, doc: int, layout: Layout, i: int, j: int, source: float, rank: int, title: str | None
    ) -> list[Unit]:
        blocks = layout.structure.blocks
        first, last = layout.run_of_kind(i)
        head = None
        if first < i:  # the header row is read with the rows (it names the columns)
            h = self.texts[doc].get(blocks[first].start, blocks[first].end)
            head = (blocks[first].start, blocks[first].end, h) if h is not None else None
        # the header row is the lead, never a neighbour row to join
        return self._run(doc, layout, i, j, "rows", head, first + 1, last, source, rank, title)

    def _items(
        self, doc: int, layout: Layout, i: int, j: int, source: float, rank: int, title: str | None
    ) -> list[Unit]:
        blocks = layout.structure.blocks
        first, last = layout.run_of_kind(i)
        lead = None
        if first > 0 and blocks[first - 1].kind == "paragraph":  # the lead-in: the paragraph's last sentence
            p = blocks[first - 1]
            ptext = self.texts[doc].get(p.start, p.end)
            if ptext is not None:
                a, b = whole_sentences(ptext, p.start)[-1]
                # only a sentence that announces the list ("... the following tools:") leads it in
                if ptext[a - p.start : b - p.start].rstrip().endswith(":"):
                    lead = (a, b, ptext[a - p.start : b - p.start])
        return self._run(doc, layout, i, j, "items", lead, first, last, source, rank, title)

    def _run(
        self,
        doc: int,
        layout: Layout,
        i: int,
        j: int,
        kind: str,
        lead: tuple[int, int, str] | None,
        body_first: int,
        last: int,
        source: float,
        rank: int,
        title: str | None,
    ) -> list[Unit]:
        """Blocks i..j of a run of rows or items (blocks body_first..last) as one unit, with its lead and
        the neighbour blocks of the run it may join."""
        blocks = layout.structure.blocks
        text = self.texts[doc].get(blocks[i].start, blocks[j].end)
        if text is None:
            return []
        return [
            Unit(
                doc,
                blocks[i].start,
                blocks[j].end,
                text,
                kind,
                source,
                rank,
                lead=lead,
                before=(blocks[i - 1].start, blocks[i - 1].end) if i > body_first else None,
                after=(blocks[j + 1].start, blocks[j + 1].end) if j < last else None,
                context=title or "",
            )
        ]

    @staticmethod
    def title_at(layout: Layout, pos: int) -> str | None:
        """The innermost section title around `pos`: what a reader of the page sees above the text."""
        path = layout.structure.section_of(pos)
        return layout.structure.blocks[path[-1]].title if path else None

    def join(self, u: Unit, side: str) -> Unit | None:
        """`u` joined with its neighbour on `side` ("before" or "after"); None when it has none there."""
        other = u.before if side == "before" else u.after
        if other is None:
            return None
        a, b = (other[0], u.end) if side == "before" else (u.start, other[1])
        text = self.texts[u.doc].get(a, b)
        if text is None:
            return None
        lead = u.lead if u.lead is None or u.lead[1] <= a else None  # a header row joined in is no longer a lead
        return Unit(u.doc, a, b, text, u.kind, u.source, u.rank, lead=lead, context=u.context, joined=True)
