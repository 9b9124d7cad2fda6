"""The ingest job: files -> LoadedDocument -> EmbeddedDocument -> store, as a bounded three-stage pipeline.

    loader thread --(docs queue)--> embedding (calling thread) --(embedded queue)--> writer thread

The loader hashes each file and skips it before any embedding when the store already holds that
content; the model runs in the calling thread on batches sized by tokens; the writer stores each
document segments-first, header-last (`TokenStore.write_document`), so a document becomes visible
to search only when complete, even if the process is killed. Both queues are bounded, so memory
stays flat however large the corpus, and parsing, embedding and writing overlap.

A bad file (unreadable, corrupt, empty, undecodable, or one the model or store rejects) is reported
with its reason and skipped; only a broken store or model stops the job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from indexer.embedders import TokenEmbedder, load_embedder
from indexer.loaders import file_hash, iter_files, load_file
from indexer.store import TokenStore, open_or_create_store, open_store
from schemas.errors import ChunklessError, InputError, StoreNotFoundError
from schemas.models import EmbeddedDocument, IngestFailure, IngestReport, LoadedDocument
from schemas.settings import Settings

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # English BPE averages ~4 characters a token: enough to size batches before tokenizing
LOAD_QUEUE_DOCS = 64  # parsed documents waiting for the model
WRITE_QUEUE_BATCHES = 2  # embedded batches waiting for the store: one being written, one ready
SERVER_ORPHAN_GRACE_S = 3600.0  # far longer than any one document's write; older orphans are a dead writer's
_DONE = object()


class Progress:
    """Files done, tokens/s and ETA: a tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, total_files: int, bar: bool) -> None:
        self.total = total_files
        self.done = 0
        self.tokens = 0
        self.t0 = time.perf_counter()
        self._last_line = 0.0
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_files, unit="file", dynamic_ncols=True, smoothing=0.1)

    def advance(self, what: str, doc_id: str, tokens: int = 0) -> None:
        """One file finished (stored, unchanged or failed)."""
        self.done += 1
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
            self._bar.update(1)
            return
        # one line per stored document; skips and failures are logged where they happen
        if what == "stored":
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / self.done * (self.total - self.done)
            log.info(
                "stored %s (%d tokens) [%d/%d files, %.0f tokens/s, ETA %.0fs]",
                doc_id,
                tokens,
                self.done,
                self.total,
                rate,
                eta,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Stage(threading.Thread):
    """A daemon thread that remembers the exception that killed it, for the main thread to re-raise."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as e:  # re-raised in the calling thread by `check`
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when the job is stopping (so no stage waits forever on a dead peer)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def ingest(
    paths: Iterable[Path],
    settings: Settings,
    embedder: TokenEmbedder | None = None,
    on_failure: Callable[[IngestFailure], None] | None = None,
    progress: bool = False,
    store: TokenStore | None = None,
) -> IngestReport:
    """Ingest every supported file under `paths`; bad files are reported and skipped, never fatal.

    The model is loaded only when some file needs embedding, so re-running over an unchanged
    corpus costs file hashing and one read of the document headers. `progress` shows a tqdm bar;
    otherwise each stored document is an INFO log line with files done, tokens/s and ETA.
    `store`: an open store to write into (the service shares its one handle between searches and
    ingest jobs); it is flushed but left open. Without it the job opens, or creates, and closes its own.
    """
    t0 = time.perf_counter()
    own_store = store is None
    if store is None:
        store, embedder = _open(settings, embedder)
    elif embedder is not None:
        store.meta.check(embedder.name, embedder.dim, None, f"collection '{settings.store.collection}'")
    report = IngestReport()
    lock = threading.Lock()  # report and callbacks are touched by all three stages

    items = list(iter_files(paths))  # a walk, no reads: gives the progress bar its total
    bar = Progress(len(items), progress)

    def fail(path: str, reason: str, doc_id: str = "") -> None:
        f = IngestFailure(path=path, reason=reason)
        with lock:
            report.failures.append(f)
            bar.advance("failed", doc_id or path)
        log.warning("skipped %s: %s", path, reason)
        if on_failure:
            on_failure(f)

    stop = threading.Event()
    docs: queue.Queue[Any] = queue.Queue(LOAD_QUEUE_DOCS)
    embedded: queue.Queue[Any] = queue.Queue(WRITE_QUEUE_BATCHES)
    try:
        # on a server another worker may be between a document's segments and its header right now
        removed = store.remove_orphans(min_age_s=SERVER_ORPHAN_GRACE_S if settings.store.url else 0.0)
        if removed:
            log.info("removed %d orphan segments left by an interrupted run", removed)
        live = {d: h.version for d, h in store.headers().items()}

        def load() -> None:
            for item in items:
                if stop.is_set():
                    return
                if isinstance(item, IngestFailure):
                    fail(item.path, item.reason)
                    continue
                path, doc_id = item
                try:
                    digest = file_hash(path)
                    if live.get(doc_id) == digest:
                        with lock:
                            report.skipped_unchanged += 1
                            bar.advance("unchanged", doc_id)
                        continue
                    doc = load_file(path, doc_id, digest)
                except InputError as e:
                    fail(e.path, e.reason, doc_id)
                    continue
                except OSError as e:  # vanished or unreadable between the walk and the read
                    fail(str(path), f"cannot read file ({e}); check it exists and is readable", doc_id)
                    continue
                if not _put(docs, doc, stop):
                    return
            _put(docs, _DONE, stop)

        def write() -> None:
            while True:
                batch = embedded.get()
                if batch is _DONE:
                    return
                for emb in batch:
                    _write_one(emb, store, live, report, lock, bar, fail)

        loader, writer = _Stage("chunkless-load", load), _Stage("chunkless-write", write)
        loader.start()
        writer.start()
        for batch in _batches(docs, settings.model.batch_tokens, loader):
            writer.check()
            if embedder is None:
                embedder = load_embedder(settings)
                e, where = embedder, f"collection '{settings.store.collection}'"
                store.meta.check(e.name, e.dim, None, where, backend=e.backend, vector_kind=e.vector_kind)
            out = _embed(batch, embedder, fail)
            if out and not _put(embedded, out, stop):
                break
        loader.check()
        _put(embedded, _DONE, stop)
        while writer.is_alive():  # join in slices: a writer error must not hide behind a blocked put
            writer.join(timeout=0.5)
        writer.check()
        store.flush()
    finally:
        stop.set()
        bar.close()
        if own_store:
            store.close()
    report.seconds = time.perf_counter() - t0
    return report


def _open(settings: Settings, embedder: TokenEmbedder | None) -> tuple[TokenStore, TokenEmbedder | None]:
    """The store to write, and the embedder if it had to be loaded to create the collection."""
    if embedder is None:
        try:
            existing = open_store(settings.store)
        except StoreNotFoundError:
            embedder = load_embedder(settings)
        else:
            # an existing collection knows its dimension: defer loading the model until a file needs it,
            # and let open_or_create_store apply every check (model, dtype, layout) as it always does
            meta = existing.meta
            existing.close()
            return open_or_create_store(settings.store, settings.model.model, meta.dim, meta.pooling), None
    e = embedder
    return open_or_create_store(settings.store, e.name, e.dim, e.pooling, e.backend, e.vector_kind), embedder


def _batches(docs: queue.Queue[Any], batch_tokens: int, loader: _Stage) -> Iterator[list[LoadedDocument]]:
    """Group loaded documents into embedding batches of about `batch_tokens` tokens.

    Blocks for the first document of a batch, then takes what is already parsed up to the budget:
    the model never idles waiting to fill a batch, and is never handed an oversized one.
    """
    while True:
        try:
            first = docs.get(timeout=0.5)
        except queue.Empty:
            loader.check()
            if not loader.is_alive() and docs.empty():
                return  # loader stopped without its end marker: it raised, and check() said so
            continue
        if first is _DONE:
            return
        batch, tokens = [first], len(first.text) // CHARS_PER_TOKEN
        while tokens < batch_tokens:
            try:
                nxt = docs.get_nowait()
            except queue.Empty:
                break
            if nxt is _DONE:
                yield batch
                return
            batch.append(nxt)
            tokens += len(nxt.text) // CHARS_PER_TOKEN
        yield batch


def _embed(
    batch: list[LoadedDocument], embedder: TokenEmbedder, fail: Callable[[str, str, str], None]
) -> list[EmbeddedDocument]:
    """Embed a batch; if it fails, embed one by one so a single bad document fails alone."""
    errors = (ChunklessError, ValueError, RuntimeError, IndexError)  # tokenizer or model rejected a document
    try:
        return embedder.embed_documents(batch)
    except errors as e:
        if len(batch) == 1:
            d = batch[0]
            fail(d.source, f"cannot embed ({type(e).__name__}: {e})", d.doc_id)
            return []
        log.info("a batch of %d documents failed to embed (%s); retrying one by one", len(batch), e)
    out: list[EmbeddedDocument] = []
    for d in batch:
        try:
            out += embedder.embed_documents([d])
        except errors as e:
            fail(d.source, f"cannot embed ({type(e).__name__}: {e})", d.doc_id)
    return out


def _write_one(
    emb: EmbeddedDocument,
    store: TokenStore,
    live: dict[str, str],
    report: IngestReport,
    lock: threading.Lock,
    bar: Progress,
    fail: Callable[[str, str, str], None],
) -> None:
    d = emb.doc
    if emb.n_tokens == 0:
        fail(d.source, "no tokens after tokenizing; the file holds no indexable text", d.doc_id)
        return
    try:
        written = store.write_document(emb)
    except ChunklessError as e:
        fail(d.source, str(e), d.doc_id)
        return
    with lock:
        report.bytes_stored += written.bytes
        if d.doc_id in live:
            report.replaced += 1
        live[d.doc_id] = d.content_hash
        report.documents += 1
        report.tokens += emb.n_tokens
        report.segments += written.segments
        bar.advance("stored", d.doc_id, emb.n_tokens)
