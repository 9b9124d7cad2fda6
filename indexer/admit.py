"""Admission: every check a file passes before it is read, in one place.

A file found by `indexer.discover` is admitted when it is of a supported type, its content can be
hashed, the store does not hold that content already under its doc_id (unchanged: skipped, the
model never runs), its doc_id does not name another file's stored document (a collision: refused,
both paths named), and, for a PDF, it is not encrypted. A refused file raises an `InputError` naming
it and what to do; the walk refuses by the same two errors what it can tell without reading
(`UnsupportedFileError` for a named file of another type, `DocIdCollisionError` for two files of one
run under one doc_id).

`Admission` is the run's view of the store's live documents, kept current as documents are written;
`check_file` makes the same file checks for a file read outside an ingest run (no store: nothing to
compare with).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import InputError

if TYPE_CHECKING:  # reading a file outside a run needs no store
    from indexer.store.meta import DocHeader

TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
PDF_SUFFIXES = {".pdf"}
HTML_SUFFIXES = {".html", ".htm"}  # read by indexer/reading/html.py
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | PDF_SUFFIXES | HTML_SUFFIXES


class UnsupportedFileError(InputError):
    """A file of a type chunkless does not read."""

    def __init__(self, path: Path) -> None:
        exts = ", ".join(sorted(SUPPORTED_SUFFIXES))
        super().__init__(str(path), f"unsupported file type '{path.suffix or '(none)'}'; chunkless reads {exts}")


class DocIdCollisionError(InputError):
    """A file whose doc_id already names another file's document (stored, or earlier in the same run)."""

    def __init__(self, doc_id: str, holder: Path | str, path: Path | str) -> None:
        super().__init__(
            str(path),
            f"DocIdCollisionError: doc_id '{doc_id}' already names {holder}; refusing to replace it with {path}. "
            "Give this file its own id (--doc-id ID, or --id-from ROOT), or delete the other first "
            f"(chunkless delete '{doc_id}')",
        )


# A stored document is what its reader made of the file, so its version covers the reader too: a
# format's revision is bumped when its reader's text or structure changes, and the next ingest reads
# those files again instead of keeping the old reading as "unchanged". PDF 2: page numbers inside the
# text area, paragraphs run on over page breaks, statement pages and rows (issue 20).
READER_REVISIONS: dict[str, int] = {".pdf": 2}


def file_hash(path: Path) -> str:
    """The document version of a file, the unit of change detection: sha256 of its bytes, and of its
    reader's revision when it has one (`READER_REVISIONS`)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    revision = READER_REVISIONS.get(path.suffix.lower())
    if revision is not None:
        h.update(f"\0reader revision {revision}".encode())
    return h.hexdigest()


def check_readable(path: Path) -> None:
    """Refuse a file no reader takes: an unsupported type, or an encrypted PDF.

    Raises:
        InputError: naming the file and what to do.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFileError(path)
    if suffix in PDF_SUFFIXES:
        import pymupdf

        _refuse_encrypted(path, pymupdf)


def check_file(path: Path, content_hash: str | None = None) -> str:
    """The checks of a file read outside an ingest run: its content hash, type and encryption.

    Args:
        path: the file.
        content_hash: its sha256 when the caller has it already.

    Returns:
        The content hash.

    Raises:
        InputError: the file cannot be read, is of an unsupported type, or is an encrypted PDF.
    """
    try:
        digest = content_hash or file_hash(path)
    except OSError as e:
        raise InputError(str(path), f"cannot read file ({e.strerror}); check permissions") from e
    check_readable(path)
    return digest


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


class Admission:
    """The store's live documents as an ingest run sees them, and the admission of each file against them.

    doc_id -> (version, source), read from the headers once and kept current by the run's writer
    (`stored`); safe to call from the loader and writer threads at once.

    Args:
        headers: the store's live documents (`TokenStore.headers()`).
    """

    def __init__(self, headers: dict[str, DocHeader]) -> None:
        self._lock = threading.Lock()
        self.docs = {d: (h.version, h.source) for d, h in headers.items()}

    @classmethod
    def from_docs(cls, docs: dict[str, tuple[str, str]]) -> Admission:
        """An admission over a copy of another one's `docs` (doc_id -> (version, source)).

        A writer in another process (`indexer.distributed`) starts from the driver's view of the store
        instead of reading every header again.
        """
        out = cls({})
        out.docs = dict(docs)
        return out

    def admit(self, path: Path, doc_id: str) -> str | None:
        """Pass one file through every check, cheapest first.

        Args:
            path: the file, as discovered (resolved).
            doc_id: the id its document is stored under.

        Returns:
            Its content hash when it is to be read and embedded; None when the store holds this content
            under `doc_id` already (unchanged: nothing to do).

        Raises:
            InputError: its doc_id names another existing file's document, its type is unsupported, or it
                is an encrypted PDF.
            OSError: it vanished or became unreadable since the walk.
        """
        digest = file_hash(path)
        if self.unchanged(doc_id, path, digest):
            return None
        holder = self.other_holder(doc_id, path)
        if holder is not None:
            raise DocIdCollisionError(doc_id, holder, path)
        check_readable(path)
        return digest

    def other_holder(self, doc_id: str, path: Path) -> str | None:
        """The source of another file whose document `doc_id` names, if that file still exists.

        A stored source that no longer exists is a moved file (or a store from another machine,
        with --id-from ids): the new file takes the id over.
        """
        with self._lock:
            held = self.docs.get(doc_id)
        if held is None or not held[1] or held[1] == str(path):
            return None
        return held[1] if Path(held[1]).exists() else None

    def unchanged(self, doc_id: str, path: Path, digest: str) -> bool:
        """True when `doc_id` holds this content and the file is stored under no other id.

        Identical content under the same id is the same document even from another path (a clone
        of the tree ingested with --id-from): nothing would change, so nothing is refused.
        """
        with self._lock:
            return self.docs.get(doc_id, ("", ""))[0] == digest and not self._older_ids(doc_id, str(path))

    def _older_ids(self, doc_id: str, source: str) -> list[str]:
        return [d for d, (_, src) in self.docs.items() if src == source and d != doc_id]

    def stored(self, doc_id: str, source: str, version: str) -> tuple[bool, list[str]]:
        """Record a write; returns (whether it replaced a document, older ids of the same file to delete)."""
        with self._lock:
            older = self._older_ids(doc_id, source)
            replaced = doc_id in self.docs or bool(older)
            self.docs[doc_id] = (version, source)
            for d in older:
                del self.docs[d]
        return replaced, older
