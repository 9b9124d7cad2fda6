"""Reading: one file to a LoadedDocument, a clean reading text plus its structure (schemas.structure).

`read_file(path, doc_id, content_hash)` reads an admitted file (`indexer.admit`) into the
`LoadedDocument` the model embeds; `load_file(path, doc_id)` checks and reads a file outside an
ingest run. `read_document(path)` picks the reader by suffix. Every reader returns a `Reading`: the
reading text (what gets embedded and what every offset indexes, with no converter markup), the
character offset where each physical page starts, a title, and a `DocStructure` whose blocks index
the text exactly. Readers raise `InputError` naming the file and what to do.
"""

from __future__ import annotations

from pathlib import Path

from indexer.admit import check_file
from indexer.reading.base import Reading, TextBuilder
from schemas.errors import InputError
from schemas.models import LoadedDocument

__all__ = ["READERS", "Reading", "TextBuilder", "load_file", "read_document", "read_file"]


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


def read_file(path: Path, doc_id: str, content_hash: str) -> LoadedDocument:
    """The document of one admitted file (`indexer.admit`): its reading text, pages, title and structure.

    Args:
        path: the file.
        doc_id: the id its document is stored under.
        content_hash: its sha256 (the document's version).

    Raises:
        InputError: the file is corrupt, empty or undecodable; the message names it and what to do.
        OSError: it cannot be read.
    """
    reading = read_document(path)
    return LoadedDocument(
        doc_id=doc_id,
        source=str(path.resolve()),
        title=reading.title,
        text=reading.text,
        page_starts=reading.page_starts,
        content_hash=content_hash,
        structure=reading.structure,
    )


def load_file(path: Path, doc_id: str, content_hash: str | None = None) -> LoadedDocument:
    """Check (`indexer.admit.check_file`) and read one file outside an ingest run.

    Raises:
        InputError: naming the file and the fix.
    """
    return read_file(path, doc_id, check_file(path, content_hash))
