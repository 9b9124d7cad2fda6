"""Plain text: the reading text is the file itself (UTF-8, BOM dropped), its paragraphs the structure.

Nothing is rewritten, so offsets index the file's characters exactly as before structure existed;
blank lines separate paragraph blocks. No headings are guessed: plain text behaves as it always did.
"""

from __future__ import annotations

import re
from pathlib import Path

from indexer.reading.base import Reading
from schemas.errors import InputError
from schemas.structure import Block, DocStructure

_PARAGRAPH = re.compile(r"\S(?:.*\S)?(?:\n[ \t]*\S(?:.*\S)?)*")


def decode_utf8(path: Path) -> str:
    """The file as UTF-8 text (a BOM dropped); raises InputError for bad bytes or an empty file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(str(path), f"cannot read file ({e.strerror}); check permissions") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            str(path), f"not valid UTF-8 (byte {e.start}); re-save the file as UTF-8 and ingest it again"
        ) from e
    if not text or text.isspace():  # not text.strip(): that copies a whole (possibly 100 MB) file
        raise InputError(str(path), "file is empty; nothing to index (remove it or add text)")
    return text


def paragraph_blocks(text: str) -> list[Block]:
    """One paragraph block per run of non-blank lines, trimmed."""
    return [Block(kind="paragraph", start=m.start(), end=m.end()) for m in _PARAGRAPH.finditer(text)]


def read_text(path: Path) -> Reading:
    text = decode_utf8(path)
    return Reading(text, [0], path.stem, DocStructure(blocks=paragraph_blocks(text)))
