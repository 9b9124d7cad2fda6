"""A document's structure beside its reading text: typed blocks with exact character ranges.

Every reader (indexer/reading/) returns a reading text free of converter markup and a
`DocStructure`: one `Block` per heading, paragraph, list item, table row, table-of-contents or index
entry, running header or footer, footnote or code line run, each with `text[start:end]` equal to
the block's text and the 1-based physical page it sits on. PDFs also carry their printed page
labels (physical page p prints `page_labels[p - 1]`).

The structure travels to the query side in the document's header payload (`to_payload` /
`from_payload`: parallel arrays, heading titles only, so a header stays small).

The query side parses the structure of every document a query recalls, so `from_payload` must not
build a validated `Block` per block (6 µs each: 35 ms for a 5,000-block manual). It keeps the
payload's arrays (`BlockArrays`) and hands out `PayloadBlocks`, a read-only sequence that builds a
block only when it is indexed (trusted: it was validated when written). The queries the span methods
make (`section_of`, `ranges`, `has_headings`, the layout arrays of retriever/fetch.py) read the
arrays, never the blocks.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, overload

from pydantic import BaseModel, Field, PrivateAttr, field_serializer, model_validator

BlockKind = Literal["heading", "paragraph", "list_item", "table_row", "toc", "header", "footer", "footnote", "code"]
# one letter per kind in the payload: a 10,000-block manual costs 10 kB, not a list of strings
KIND_CODES: dict[BlockKind, str] = {
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
_KINDS: dict[str, BlockKind] = {v: k for k, v in KIND_CODES.items()}
_HEADING = KIND_CODES["heading"]
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


@dataclass(frozen=True)
class Headings:
    """The headings of a structure, for section paths without walking the other blocks.

    `parents[k]` is the heading number (an index into these lists) of heading k's parent, the nearest
    earlier heading of a lower level, or -1: following it from the last heading at or before a position
    gives that position's section path.
    """

    blocks: list[int]  # block index of each heading
    starts: list[int]  # its start (non-decreasing, as block starts are)
    parents: list[int]


@dataclass(eq=False)
class BlockArrays:
    """A structure's blocks as the payload's parallel arrays, one entry per block.

    This is what the query side reads: a parsed payload keeps its lists as they came (no copy, no
    per-block object), and the layout arrays, section paths and kind ranges are computed from them.
    """

    kinds: str  # one `KIND_CODES` letter per block
    starts: Sequence[int]
    ends: Sequence[int]
    pages: Sequence[int]
    levels: Sequence[int]  # 0: none
    titles: Mapping[str, str]  # str(block index) -> title, blocks with a title only

    def __len__(self) -> int:
        return len(self.kinds)

    @classmethod
    def of_blocks(cls, blocks: Sequence[Block]) -> BlockArrays:
        """The arrays of validated blocks (what `to_payload` writes)."""
        return cls(
            kinds="".join(KIND_CODES[b.kind] for b in blocks),
            starts=[b.start for b in blocks],
            ends=[b.end for b in blocks],
            pages=[b.page for b in blocks],
            levels=[b.level or 0 for b in blocks],
            titles={str(i): b.title for i, b in enumerate(blocks) if b.title is not None},
        )

    @classmethod
    def of_payload(cls, p: Mapping[str, Any]) -> BlockArrays:
        """The arrays of a payload, as they are; ValueError when they disagree in length or name an
        unknown kind (so a corrupt header fails here, as it did when every block was validated)."""
        arrays = cls(p["kinds"], p["starts"], p["ends"], p["pages"], p["levels"], p.get("titles") or {})
        n = len(arrays.kinds)
        if any(len(a) != n for a in (arrays.starts, arrays.ends, arrays.pages, arrays.levels)):
            raise ValueError("structure payload arrays differ in length")
        if not set(arrays.kinds) <= _KINDS.keys():
            raise ValueError(f"structure payload has unknown block kinds {set(arrays.kinds) - _KINDS.keys()}")
        return arrays

    def block(self, i: int) -> Block:
        """Block i, built without validation: the payload was written from validated blocks."""
        return Block.model_construct(
            kind=_KINDS[self.kinds[i]],
            start=self.starts[i],
            end=self.ends[i],
            page=self.pages[i],
            level=self.levels[i] or None,
            title=self.titles.get(str(i)),
        )

    @cached_property
    def headings(self) -> Headings:
        """The headings and their parents, found once (`str.find` skips the other blocks in C)."""
        idx: list[int] = []
        i = self.kinds.find(_HEADING)
        while i >= 0:
            idx.append(i)
            i = self.kinds.find(_HEADING, i + 1)
        parents: list[int] = []
        stack: list[tuple[int, int]] = []  # (level, heading number) of the open sections, outermost first
        for k, i in enumerate(idx):
            level = self.levels[i] or 1
            while stack and stack[-1][0] >= level:
                stack.pop()
            parents.append(stack[-1][1] if stack else -1)
            stack.append((level, k))
        return Headings(idx, [self.starts[i] for i in idx], parents)


class PayloadBlocks(Sequence[Block]):
    """The blocks of a parsed payload: a read-only sequence that builds a block when it is first
    indexed and keeps it, so a query pays for the few blocks its spans touch, not for all of them.

    Slices are views sharing the built blocks (`blocks[i + 1:]` then a loop that stops early builds
    only what the loop reads). Equal to a list of the same blocks, as the list it replaces was.
    Shared by the threads that read one cached layout: two of them may build the same block at once,
    which costs a few microseconds and gives equal blocks, so no lock is taken.
    """

    __slots__ = ("_arrays", "_built", "_range")

    def __init__(self, arrays: BlockArrays, built: list[Block | None] | None = None, rng: range | None = None):
        self._arrays = arrays
        self._built: list[Block | None] = built if built is not None else [None] * len(arrays)
        self._range = rng if rng is not None else range(len(arrays))

    @property
    def built(self) -> int:
        """How many blocks of the whole structure have been built so far (what lookups have cost)."""
        return sum(b is not None for b in self._built)

    def _at(self, j: int) -> Block:
        b = self._built[j]
        if b is None:
            b = self._built[j] = self._arrays.block(j)
        return b

    def __len__(self) -> int:
        return len(self._range)

    @overload
    def __getitem__(self, i: int) -> Block: ...
    @overload
    def __getitem__(self, i: slice) -> PayloadBlocks: ...
    def __getitem__(self, i: int | slice) -> Block | PayloadBlocks:
        if isinstance(i, slice):
            return PayloadBlocks(self._arrays, self._built, self._range[i])
        return self._at(self._range[i])

    def __iter__(self) -> Iterator[Block]:
        for j in self._range:
            yield self._at(j)

    def __eq__(self, other: object) -> bool:
        """Block by block, as list equality (a structure parsed from a payload equals the one written)."""
        if not isinstance(other, list | PayloadBlocks):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __repr__(self) -> str:
        return f"PayloadBlocks({len(self)} blocks, {self.built} of {len(self._built)} built)"


class DocStructure(BaseModel):
    """The blocks of one document in reading order (non-overlapping) and its page labels.

    Writers build it from a list of validated blocks; `from_payload` gives `PayloadBlocks`. The block
    list must not be changed in place once the structure has been queried: its arrays are kept.
    """

    blocks: Sequence[Block] = Field(default_factory=list)
    page_labels: list[str] | None = Field(None, description="Printed label of each physical page, if the PDF has any.")
    # (the blocks they were computed from, their arrays): recomputed when `blocks` is reassigned
    _arrays: tuple[Sequence[Block], BlockArrays] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _sorted(self) -> DocStructure:
        for a, b in zip(self.blocks, self.blocks[1:], strict=False):
            if b.start < a.end:
                raise ValueError(f"blocks overlap or are out of order at {a.start}-{a.end} / {b.start}-{b.end}")
        return self

    @field_serializer("blocks")
    def _blocks_as_list(self, blocks: Sequence[Block]) -> list[Block]:
        """Dumped as the list of blocks whichever sequence holds them (pydantic cannot dump `PayloadBlocks`)."""
        return list(blocks)

    def __eq__(self, other: object) -> bool:
        """Same blocks and page labels (pydantic's own equality would also compare the cached arrays)."""
        if not isinstance(other, DocStructure):
            return NotImplemented
        return self.page_labels == other.page_labels and self.blocks == other.blocks

    @property
    def arrays(self) -> BlockArrays:
        """The blocks as parallel arrays: what the queries below and the query side's layout read."""
        cached = self._arrays
        if cached is None or cached[0] is not self.blocks:
            cached = self._arrays = (self.blocks, BlockArrays.of_blocks(self.blocks))
        return cached[1]

    # --- queries used by span methods -------------------------------------------------------------
    @property
    def has_headings(self) -> bool:
        return _HEADING in self.arrays.kinds

    def ranges(self, kinds: frozenset[str] | set[str]) -> list[tuple[int, int]]:
        """[start, end) of every block of the given kinds, in order."""
        a = self.arrays
        codes = {c for k, c in KIND_CODES.items() if k in kinds}
        return [(a.starts[i], a.ends[i]) for i, c in enumerate(a.kinds) if c in codes]

    def section_of(self, pos: int) -> list[int]:
        """Indices of the headings whose sections hold `pos`, outermost first (the section path)."""
        h = self.arrays.headings
        k = bisect_right(h.starts, pos) - 1  # the last heading starting at or before pos
        path: list[int] = []
        while k >= 0:
            path.append(h.blocks[k])
            k = h.parents[k]
        return path[::-1]

    def section_path(self, pos: int) -> str | None:
        """e.g. '7 Troubleshooting › 7.24 Why does the search page not load?'; None outside any section."""
        titles = self.arrays.titles
        return SECTION_SEPARATOR.join(t for i in self.section_of(pos) if (t := titles.get(str(i)))) or None

    def labels_of(self, pages: list[int]) -> list[str] | None:
        """Printed labels of 1-based physical pages; None when the document has no labels."""
        if not self.page_labels:
            return None
        return [self.page_labels[p - 1] if 0 < p <= len(self.page_labels) else "" for p in pages]

    # --- header payload -----------------------------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        """Compact JSON-able form for the document header (parallel arrays, titles of headings only)."""
        a = self.arrays
        return {
            "v": PAYLOAD_VERSION,
            "kinds": a.kinds,
            "starts": list(a.starts),
            "ends": list(a.ends),
            "pages": list(a.pages),
            "levels": list(a.levels),
            "titles": dict(a.titles),
            "page_labels": self.page_labels,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any] | None) -> DocStructure | None:
        """Inverse of `to_payload`; None for a header written without structure (or by a newer version).

        No block is built here (see `PayloadBlocks`) and nothing is validated again: the payload was
        written from a validated structure.
        """
        if not p or p.get("v") != PAYLOAD_VERSION:
            return None
        arrays = BlockArrays.of_payload(p)
        blocks = PayloadBlocks(arrays)
        s = cls.model_construct(blocks=blocks, page_labels=p.get("page_labels"))
        s._arrays = (blocks, arrays)
        return s
