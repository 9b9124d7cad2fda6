"""Turn files into LoadedDocuments: PDF through pymupdf4llm, Markdown and text verbatim.

doc_id: the file's POSIX path relative to the *parent* of the path given to the loader, so
`chunkless ingest docs/` names `docs/a/b.pdf` as "docs/a/b.pdf" and `chunkless ingest docs/a/b.pdf`
names it "b.pdf". It depends only on what was asked for, not on the working directory or the
machine, so re-ingesting the same tree from another clone reaches the same points.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from schemas.errors import InputError
from schemas.models import IngestFailure, LoadedDocument

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | PDF_SUFFIXES
PAGE_JOINER = "\n\n"


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
    if suffix in PDF_SUFFIXES:
        text, page_starts, title = _load_pdf(path)
    elif suffix in TEXT_SUFFIXES:
        text, title = _load_text(path)
        page_starts = [0]
    else:
        raise InputError(str(path), _unsupported(path))
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
