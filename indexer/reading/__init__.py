"""Readers: each file format to a clean reading text plus its structure (schemas.structure).

`read_document(path)` picks the reader by suffix. Every reader returns a `Reading`: the reading
text (what gets embedded and what every offset indexes, with no converter markup), the character
offset where each physical page starts, a title, and a `DocStructure` whose blocks index the text
exactly. Readers raise `InputError` naming the file and what to do.
"""

from __future__ import annotations

from pathlib import Path

from indexer.reading.base import Reading, TextBuilder
from schemas.errors import InputError

__all__ = ["READERS", "Reading", "TextBuilder", "read_document"]


def _pdf(path: Path) -> Reading:
    from indexer.reading.pdf import read_pdf

    return read_pdf(path)


def _markdown(path: Path) -> Reading:
    from indexer.reading.markdown import read_markdown

    return read_markdown(path)


def _html(path: Path) -> Reading:
    from indexer.reading.html import read_html

    return read_html(path)


def _text(path: Path) -> Reading:
    from indexer.reading.text import read_text

    return read_text(path)


READERS = {
    ".pdf": _pdf,
    ".md": _markdown,
    ".markdown": _markdown,
    ".html": _html,
    ".htm": _html,
    ".txt": _text,
}


def read_document(path: Path) -> Reading:
    """Reading text and structure of one file, by its suffix; raises InputError."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(
            str(path), f"no reader for '{path.suffix or '(none)'}'; chunkless reads {', '.join(sorted(READERS))}"
        )
    return reader(path)
