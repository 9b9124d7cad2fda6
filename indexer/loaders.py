"""Turn one file into a LoadedDocument: reading text and structure per format (indexer/reading).

Which files a run ingests and the doc_id each gets is `indexer.discover`'s job; this module only loads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from indexer.discover import PDF_SUFFIXES, discover, unsupported
from indexer.discover import SUPPORTED_SUFFIXES as SUPPORTED_SUFFIXES  # scripts import it from here
from indexer.reading import read_document
from schemas.errors import InputError
from schemas.models import IngestFailure, LoadedDocument

log = logging.getLogger(__name__)


def file_hash(path: Path) -> str:
    """sha256 of the file's bytes: the unit of change detection."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_file(path: Path, doc_id: str, content_hash: str | None = None) -> LoadedDocument:
    """Load one file; raises InputError naming the file and the fix."""
    suffix = path.suffix.lower()
    try:
        digest = content_hash or file_hash(path)
    except OSError as e:
        raise InputError(str(path), f"cannot read file ({e.strerror}); check permissions") from e
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(str(path), unsupported(path))
    if suffix in PDF_SUFFIXES:
        import pymupdf

        _refuse_encrypted(path, pymupdf)
    reading = read_document(path)  # reading text + structure (indexer/reading), per format
    return LoadedDocument(
        doc_id=doc_id,
        source=str(path.resolve()),
        title=reading.title,
        text=reading.text,
        page_starts=reading.page_starts,
        content_hash=digest,
        structure=reading.structure,
    )


def _refuse_encrypted(path: Path, pymupdf: Any) -> None:
    """Raise InputError for a password-protected PDF (pymupdf4llm would fail on it with a TypeError)."""
    try:
        with pymupdf.open(path) as doc:
            locked = bool(doc.needs_pass)
    except Exception:  # not a PDF at all: let the full parse say "corrupt" as it always has
        return
    if locked:
        raise InputError(
            str(path),
            "PDF is encrypted (password-protected); save an unencrypted copy (e.g. qpdf --decrypt "
            "--password=PW in.pdf out.pdf) and ingest that",
        )


def load_paths(
    paths: Iterable[Path], id_from: Path | None = None, doc_id: str | None = None
) -> Iterator[LoadedDocument | IngestFailure]:
    """Load every supported file under `paths` (ids as `indexer.discover.discover` gives them).

    Bad files come back as IngestFailure, never raise.
    """
    found = discover(paths, id_from, doc_id)
    yield from found.failures
    for f in found.files:
        try:
            yield load_file(f.path, f.doc_id)
        except InputError as e:
            yield IngestFailure(path=e.path, reason=e.reason)
