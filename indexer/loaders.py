"""Turn files into LoadedDocuments: reading text and structure per format (indexer/reading).

doc_id: the file's POSIX path relative to the *parent* of the path given to the loader, so
`chunkless ingest docs/` names `docs/a/b.pdf` as "docs/a/b.pdf" and `chunkless ingest docs/a/b.pdf`
names it "b.pdf". It depends only on what was asked for, not on the working directory or the
machine, so re-ingesting the same tree from another clone reaches the same points.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from indexer.reading import read_document
from schemas.errors import InputError
from schemas.models import IngestFailure, LoadedDocument

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
PDF_SUFFIXES = {".pdf"}
HTML_SUFFIXES = {".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | PDF_SUFFIXES | HTML_SUFFIXES


def iter_files(paths: Iterable[Path]) -> Iterator[tuple[Path, str] | IngestFailure]:
    """Yield (file, doc_id) for every supported file under `paths`, or a failure for a bad argument."""
    for root in paths:
        if not root.exists():
            yield IngestFailure(path=str(root), reason="path does not exist; check the spelling")
            continue
        if root.is_file():
            if root.suffix.lower() not in SUPPORTED_SUFFIXES:
                yield IngestFailure(path=str(root), reason=_unsupported(root))
            else:
                yield root, root.name
            continue
        base = root.resolve().parent
        for f in sorted(p for p in root.resolve().rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in f.relative_to(base).parts):
                continue  # hidden files and folders (.git, .DS_Store) are never documents
            if f.suffix.lower() not in SUPPORTED_SUFFIXES:
                log.info("skipping %s: %s", f, _unsupported(f))
                continue
            yield f, f.relative_to(base).as_posix()


def _unsupported(path: Path) -> str:
    exts = ", ".join(sorted(SUPPORTED_SUFFIXES))
    return f"unsupported file type '{path.suffix or '(none)'}'; chunkless reads {exts}"


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
        raise InputError(str(path), _unsupported(path))
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


def load_paths(paths: Iterable[Path]) -> Iterator[LoadedDocument | IngestFailure]:
    """Load every supported file under `paths`; bad files come back as IngestFailure, never raise."""
    for item in iter_files(paths):
        if isinstance(item, IngestFailure):
            yield item
            continue
        path, doc_id = item
        try:
            yield load_file(path, doc_id)
        except InputError as e:
            yield IngestFailure(path=e.path, reason=e.reason)
