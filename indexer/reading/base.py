"""What every reader returns, and the builder that keeps offsets exact while the text is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import InputError
from schemas.structure import Block, BlockKind, DocStructure

BLOCK_SEPARATOR = "\n\n"  # a newline ends a sentence (indexer.boundaries): no span runs across blocks


@dataclass
class Reading:
    """A document as chunkless reads it: `text` is what is embedded; `structure` indexes it."""

    text: str
    page_starts: list[int]
    title: str
    structure: DocStructure


@dataclass
class TextBuilder:
    """Append blocks to a reading text; each block's range is recorded as it is written."""

    parts: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    page_starts: list[int] = field(default_factory=list)
    pos: int = 0

    def add(
        self,
        kind: BlockKind,
        text: str,
        page: int = 1,
        level: int | None = None,
        separator: str = BLOCK_SEPARATOR,
        page_breaks: Sequence[tuple[int, int]] = (),
    ) -> Block | None:
        """Append one block (whitespace collapsed at its ends); returns it, or None when `text` is blank.

        `page_breaks`: (offset into `text`, page) where a later page starts inside the block (a paragraph
        that runs on over a page break); the block's `page` is the page it starts on.
        """
        body = text.strip()
        if not body:
            return None
        if self.parts:
            self.parts.append(separator)
            self.pos += len(separator)
        while len(self.page_starts) < page:  # pages with no text start where the next text does
            self.page_starts.append(self.pos)
        start = self.pos
        lead = len(text) - len(text.lstrip())
        for offset, later in page_breaks:
            while len(self.page_starts) < later:
                self.page_starts.append(start + min(max(offset - lead, 0), len(body)))
        self.parts.append(body)
        self.pos += len(body)
        block = Block(
            kind=kind, start=start, end=self.pos, page=page, level=level, title=body if kind == "heading" else None
        )
        self.blocks.append(block)
        return block

    def finish(self, path: Path, title: str, n_pages: int = 1, page_labels: list[str] | None = None) -> Reading:
        """The Reading; raises InputError when nothing was read."""
        text = "".join(self.parts)
        if not text.strip():
            raise InputError(str(path), "file has no text to index (empty); remove it or add text")
        starts = list(self.page_starts) or [0]
        while len(starts) < n_pages:
            starts.append(len(text))
        starts[0] = 0
        return Reading(text, starts, title, DocStructure(blocks=self.blocks, page_labels=page_labels))
