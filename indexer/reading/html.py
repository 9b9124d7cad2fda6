"""HTML -> reading text and structure with the standard library's html.parser (no new dependency).

Blocks: h1-h6 headings (their level), p, li (list items), tr (table rows, cells joined by "; "),
pre (code), dt/dd/blockquote/figcaption/caption as paragraphs, and loose text between blocks as a
paragraph. Text inside script, style, template, head and svg is dropped; nav is kept as `toc` (it
locates, it does not answer). Whitespace is collapsed except in pre. The <title> (else the first h1)
is the title.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from indexer.reading.base import Reading, TextBuilder
from indexer.reading.text import decode_utf8
from schemas.structure import BlockKind

_SKIP = {"script", "style", "template", "head", "svg", "noscript"}
_BLOCKS: dict[str, BlockKind] = {
    "p": "paragraph",
    "li": "list_item",
    "tr": "table_row",
    "pre": "code",
    "dt": "paragraph",
    "dd": "paragraph",
    "blockquote": "paragraph",
    "figcaption": "paragraph",
    "caption": "paragraph",
}
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
# tags that end the current loose-text paragraph without being blocks themselves
_BREAKS = {
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "ul",
    "ol",
    "dl",
    "table",
    "br",
    "hr",
    "body",
    "form",
    "details",
    "summary",
    "td",
    "th",
}


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.b = TextBuilder()
        self.skip = 0
        self.nav = 0
        self.buf: list[str] = []
        self.kind: BlockKind = "paragraph"
        self.level: int | None = None
        self.cells: list[str] | None = None
        self.pre = 0
        self.title = ""
        self.in_title = False
        self.first_h1: str | None = None

    def _flush(self) -> None:
        text = "".join(self.buf)
        if self.kind != "code":
            text = " ".join(text.split())
        kind: BlockKind = "toc" if self.nav and self.kind != "heading" else self.kind
        blk = self.b.add(kind, text, level=self.level if kind == "heading" else None)
        if blk is not None and kind == "heading" and self.level == 1 and self.first_h1 is None:
            self.first_h1 = text
        self.buf, self.kind, self.level = [], "paragraph", None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _SKIP:
            self.skip += 1
            return
        if tag == "nav":
            self._flush()
            self.nav += 1
        if tag in _HEADINGS or tag in _BLOCKS:
            self._flush()
            self.kind = "heading" if tag in _HEADINGS else _BLOCKS[tag]
            self.level = _HEADINGS.get(tag)
            if tag == "tr":
                self.cells = []
            if tag == "pre":
                self.pre += 1
        elif tag in ("td", "th") and self.cells is not None:
            self._cell()
        elif tag in _BREAKS:
            if tag == "br" and self.kind != "paragraph":
                self.buf.append(" ")
            elif not (tag in ("ul", "ol") and self.kind == "list_item"):
                self._flush()

    def _cell(self) -> None:
        if self.cells is not None:
            cell = " ".join("".join(self.buf).split())
            if cell:
                self.cells.append(cell)
            self.buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "tr" and self.cells is not None:
            self._cell()
            self.buf, self.kind = ["; ".join(self.cells)], "table_row"
            self.cells = None
            self._flush()
        elif tag in _HEADINGS or tag in _BLOCKS:
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self._flush()
        elif tag in ("td", "th") and self.cells is not None:
            self._cell()
        elif tag in _BREAKS and tag != "br":
            self._flush()
        if tag == "nav":
            self._flush()
            self.nav = max(0, self.nav - 1)

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        if self.skip:
            return
        self.buf.append(data)


def read_html(path: Path) -> Reading:
    r = _Reader()
    r.feed(decode_utf8(path))
    r.close()
    r._flush()
    title = " ".join(r.title.split()) or r.first_h1 or path.stem
    return r.b.finish(path, title)
