"""The ingest job: files -> LoadedDocument -> EmbeddedDocument -> store, skipping unchanged files."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from indexer.embedders import TokenEmbedder, load_embedder
from indexer.loaders import file_hash, iter_files, load_file
from indexer.store import TokenStore, open_or_create_store
from schemas.errors import ChunklessError, InputError
from schemas.models import IngestFailure, IngestReport, LoadedDocument
from schemas.settings import Settings

log = logging.getLogger(__name__)

BATCH_CHARS = 200_000  # documents embedded together: enough to fill token-budgeted batches


def ingest(
    paths: Iterable[Path],
    settings: Settings,
    embedder: TokenEmbedder | None = None,
    on_failure: Callable[[IngestFailure], None] | None = None,
) -> IngestReport:
    """Ingest every supported file under `paths`; bad files are reported and skipped, never fatal."""
    t0 = time.perf_counter()
    embedder = embedder or load_embedder(settings)
    store = open_or_create_store(settings, embedder.name, embedder.dim, getattr(embedder, "pooling", "mean"))
    report = IngestReport()

    def fail(path: str, reason: str) -> None:
        f = IngestFailure(path=path, reason=reason)
        report.failures.append(f)
        log.warning("skipped %s: %s", path, reason)
        if on_failure:
            on_failure(f)

    try:
        removed = store.remove_orphans()
        if removed:
            log.info("removed %d orphan segments left by an interrupted run", removed)
        live = {d: h["version"] for d, h in store.headers().items()}
        batch: list[LoadedDocument] = []
        for item in iter_files(paths):
            if isinstance(item, IngestFailure):
                fail(item.path, item.reason)
                continue
            path, doc_id = item
            try:
                digest = file_hash(path)
                if live.get(doc_id) == digest:
                    report.skipped_unchanged += 1
                    continue
                batch.append(load_file(path, doc_id, digest))
            except InputError as e:
                fail(e.path, e.reason)
                continue
            if sum(len(d.text) for d in batch) >= BATCH_CHARS:
                _flush(batch, embedder, store, live, report, fail)
                batch = []
        _flush(batch, embedder, store, live, report, fail)
        store.flush()
    finally:
        store.close()
    report.seconds = time.perf_counter() - t0
    return report


def _flush(
    batch: list[LoadedDocument],
    embedder: TokenEmbedder,
    store: TokenStore,
    live: dict[str, str],
    report: IngestReport,
    fail: Callable[[str, str], None],
) -> None:
    if not batch:
        return
    for emb in embedder.embed_documents(batch):
        try:
            report.bytes_stored += store.write_document(emb)
        except ChunklessError as e:
            fail(emb.doc.source, str(e))
            continue
        if emb.doc.doc_id in live:
            report.replaced += 1
        live[emb.doc.doc_id] = emb.doc.content_hash
        report.documents += 1
        report.tokens += emb.n_tokens
        report.segments += -(-emb.n_tokens // max(1, (2**20 - 1) // emb.dim))
