"""Turn one file into a LoadedDocument: PDF through pymupdf4llm, Markdown and text verbatim.

Which files a run ingests and the doc_id each gets is `indexer.discover`'s job; this module only loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from indexer.discover import PDF_SUFFIXES, TEXT_SUFFIXES, discover, unsupported
from indexer.discover import SUPPORTED_SUFFIXES as SUPPORTED_SUFFIXES  # scripts import it from here
from schemas.errors import InputError
from schemas.models import IngestFailure, LoadedDocument

log = logging.getLogger(__name__)

PAGE_JOINER = "\n\n"


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
    if suffix in PDF_SUFFIXES:
        text, page_starts, title = _load_pdf(path)
    elif suffix in TEXT_SUFFIXES:
        text, title = _load_text(path)
        page_starts = [0]
    else:
        raise InputError(str(path), unsupported(path))
    return LoadedDocument(
        doc_id=doc_id,
        source=str(path.resolve()),
        title=title,
        text=text,
        page_starts=page_starts,
        content_hash=digest,
    )


def _load_text(path: Path) -> tuple[str, str]:
    raw = path.read_bytes()
    try:
        # utf-8-sig drops a BOM so offset 0 is the first real character; nothing else is touched
        # (no newline translation), so offsets index exactly the text we store.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            str(path), f"not valid UTF-8 (byte {e.start}); re-save the file as UTF-8 and ingest it again"
        ) from e
    if not text.strip():
        raise InputError(str(path), "file is empty; nothing to index (remove it or add text)")
    m = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE) if path.suffix.lower() != ".txt" else None
    return text, (m.group(1).strip() if m else path.stem)


def _load_pdf(path: Path) -> tuple[str, list[int], str]:
    import pymupdf
    import pymupdf4llm

    pymupdf.set_messages(pylogging=True)  # keep MuPDF chatter off stdout (search --json prints there)
    logging.getLogger("pymupdf").setLevel(logging.ERROR)  # "RapidOCR is missing" on every file is noise
    _refuse_encrypted(path, pymupdf)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            pages = pymupdf4llm.to_markdown(str(path), page_chunks=True, show_progress=False)
    except Exception as e:  # MuPDF raises several types for damaged files
        raise InputError(
            str(path), f"cannot read PDF ({type(e).__name__}: {e}); the file is corrupt or not a PDF"
        ) from e
    texts = [str(p.get("text", "")) for p in pages]
    if not any(t.strip() for t in texts):
        raise InputError(
            str(path), "PDF has no extractable text (empty or scanned); run OCR on it first, then ingest it"
        )
    starts, parts, pos = [], [], 0
    for i, t in enumerate(texts):
        starts.append(pos)
        sep = PAGE_JOINER if i + 1 < len(texts) and not t.endswith("\n\n") else ""
        parts.append(t + sep)
        pos += len(t) + len(sep)
    meta = pages[0].get("metadata", {}) if pages else {}
    title = str(meta.get("title") or "").strip() or path.stem
    return "".join(parts), starts, title


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
