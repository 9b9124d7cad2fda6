"""A document's structure beside its reading text: typed blocks with exact character ranges.

Every reader (indexer/reading/) returns a reading text free of converter markup and a
`DocStructure`: one `Block` per heading, paragraph, list item, table row, table-of-contents or index
entry, running header or footer, footnote or code line run, each with `text[start:end]` equal to
the block's text and the 1-based physical page it sits on. PDFs also carry their printed page
labels (physical page p prints `page_labels[p - 1]`).

The structure travels to the query side in the document's header payload (`to_payload` /
`from_payload`: parallel arrays, heading titles only, so a header stays small).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

BlockKind = Literal["heading", "paragraph", "list_item", "table_row", "toc", "header", "footer", "footnote", "code"]
# one letter per kind in the payload: a 10,000-block manual costs 10 kB, not a list of strings
_CODES: dict[str, str] = {
    "heading": "H",
    "paragraph": "P",
    "list_item": "L",
    "table_row": "R",
    "toc": "T",
    "header": "h",
    "footer": "f",
    "footnote": "n",
    "code": "C",
}
_KINDS = {v: k for k, v in _CODES.items()}
# blocks that locate text (pages, navigation) but never answer: spans are not cut from them
NON_ANSWER_KINDS: frozenset[str] = frozenset({"toc", "header", "footer"})
SECTION_SEPARATOR = " › "
PAYLOAD_VERSION = 1


class Block(BaseModel):
    """One structural unit: reading text [start, end) on physical page `page`."""

    kind: BlockKind
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    page: int = Field(1, ge=1, description="1-based physical page (page index + 1).")
    level: int | None = Field(None, ge=1, description="Headings: 1 = top level.")
    title: str | None = Field(None, description="Headings: their text, for section paths.")

    @model_validator(mode="after")
    def _ordered(self) -> Block:
        if self.end < self.start:
            raise ValueError(f"block end {self.end} before start {self.start}")
        return self


class DocStructure(BaseModel):
    """The blocks of one document in reading order (non-overlapping) and its page labels."""

    blocks: list[Block] = Field(default_factory=list)
    page_labels: list[str] | None = Field(None, description="Printed label of each physical page, if the PDF has any.")

    @model_validator(mode="after")
    def _sorted(self) -> DocStructure:
        for a, b in zip(self.blocks, self.blocks[1:], strict=False):
            if b.start < a.end:
                raise ValueError(f"blocks overlap or are out of order at {a.start}-{a.end} / {b.start}-{b.end}")
        return self

    # --- queries used by span methods -------------------------------------------------------------
    @property
    def has_headings(self) -> bool:
        return any(b.kind == "heading" for b in self.blocks)

    def ranges(self, kinds: frozenset[str] | set[str]) -> list[tuple[int, int]]:
        """[start, end) of every block of the given kinds, in order."""
        return [(b.start, b.end) for b in self.blocks if b.kind in kinds]

    def section_of(self, pos: int) -> list[int]:
        """Indices of the headings whose sections hold `pos`, outermost first (the section path)."""
        path: list[int] = []
        for i, b in enumerate(self.blocks):
            if b.start > pos:
                break
            if b.kind != "heading":
                continue
            lvl = b.level or 1
            while path and (self.blocks[path[-1]].level or 1) >= lvl:
                path.pop()
            path.append(i)
        return path

    def section_path(self, pos: int) -> str | None:
        """e.g. '7 Troubleshooting › 7.24 Why does the search page not load?'; None outside any section."""
        titles = [self.blocks[i].title or "" for i in self.section_of(pos)]
        return SECTION_SEPARATOR.join(t for t in titles if t) or None

    def labels_of(self, pages: list[int]) -> list[str] | None:
        """Printed labels of 1-based physical pages; None when the document has no labels."""
        if not self.page_labels:
            return None
        return [self.page_labels[p - 1] if 0 < p <= len(self.page_labels) else "" for p in pages]

    # --- header payload -----------------------------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        """Compact JSON-able form for the document header (parallel arrays, titles of headings only)."""
        return {
            "v": PAYLOAD_VERSION,
            "kinds": "".join(_CODES[b.kind] for b in self.blocks),
            "starts": [b.start for b in self.blocks],
            "ends": [b.end for b in self.blocks],
            "pages": [b.page for b in self.blocks],
            "levels": [b.level or 0 for b in self.blocks],
            "titles": {str(i): b.title for i, b in enumerate(self.blocks) if b.title is not None},
            "page_labels": self.page_labels,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any] | None) -> DocStructure | None:
        """Inverse of `to_payload`; None for a header written without structure (or by a newer version)."""
        if not p or p.get("v") != PAYLOAD_VERSION:
            return None
        titles = p.get("titles") or {}
        blocks = [
            Block(
                kind=_KINDS[k],
                start=s,
                end=e,
                page=pg,
                level=lv or None,
                title=titles.get(str(i)),
            )
            for i, (k, s, e, pg, lv) in enumerate(
                zip(p["kinds"], p["starts"], p["ends"], p["pages"], p["levels"], strict=True)
            )
        ]
        return cls(blocks=blocks, page_labels=p.get("page_labels"))
