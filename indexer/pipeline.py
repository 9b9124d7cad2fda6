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

import numpy as np

from indexer.discover import collision_reason, discover
from indexer.embedders import TokenEmbedder, load_embedder
from indexer.embedders.hf import WindowedModel
from indexer.loaders import file_hash, load_file
from indexer.parts import HFWindows, PartCommit, PartWrite, embed_in_parts
from indexer.sentence_vectors import with_sentence_vectors
from indexer.store import DocHeader, TokenStore, Written, open_or_create_store, open_store
from schemas.errors import ChunklessError, InputError, StorageFaultError, StoreNotFoundError
from schemas.models import EmbeddedDocument, IngestFailure, IngestReport, LoadedDocument
from schemas.settings import Settings

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # English BPE averages ~4 characters a token: enough to size batches before tokenizing
LOAD_QUEUE_DOCS = 64  # parsed documents waiting for the model
WRITE_QUEUE_BATCHES = 2  # embedded batches waiting for the store: one being written, one ready
HEARTBEAT_S = 5.0  # longest silence of a non-terminal run: a pipe reader (CI, a supervisor) sees it is alive
SERVER_ORPHAN_GRACE_S = 3600.0  # far longer than any one document's write; older orphans are a dead writer's
_DONE = object()


class Progress:
    """Files done (a big file counted in fractions as its tokens are embedded), tokens/s and ETA.

    On a terminal a tqdm bar; otherwise one log line per stored document, plus a heartbeat line
    whenever nothing was logged for `every_s` seconds, so output to a pipe or a log file is never
    silent for long (parsing a big PDF, loading the model, embedding one huge file).

    Args:
        total_files: files the run will go through (the bar's total).
        bar: draw a tqdm bar (terminal) instead of log lines.
        clock: seconds, monotonic; tests pass a fake one.
        every_s: longest silence between log lines in a non-terminal run.
    """

    def __init__(
        self,
        total_files: int,
        bar: bool,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = HEARTBEAT_S,
    ) -> None:
        self.total = total_files
        self.done = 0
        self.tokens = 0  # tokens of finished files
        self._partial: dict[str, tuple[int, int]] = {}  # doc_id -> (tokens embedded, tokens in the file)
        self._clock = clock
        self.every_s = every_s
        self.t0 = clock()
        self._last_line = self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_files, unit="file", dynamic_ncols=True, smoothing=0.1)

    @property
    def files(self) -> float:
        """Files done, counting each file being embedded by the share of its tokens already embedded."""
        return self.done + sum(d / t for d, t in self._partial.values() if t > 0)

    @property
    def tokens_seen(self) -> int:
        """Tokens embedded so far, in finished and unfinished files."""
        return self.tokens + sum(d for d, _ in self._partial.values())

    def rate(self) -> float:
        return self.tokens_seen / max(self._clock() - self.t0, 1e-9)

    def line(self) -> str:
        """Where the run stands: files (fractional), tokens, tokens/s and ETA."""
        files = self.files
        elapsed = self._clock() - self.t0
        eta = f"ETA {elapsed / files * (self.total - files):.0f}s" if files > 0 else "ETA ?"
        return f"[{files:.1f}/{self.total} files, {self.tokens_seen:,} tokens, {self.rate():,.0f} tokens/s, {eta}]"

    def working(self, doc_id: str, tokens_done: int, tokens_total: int) -> None:
        """Part of a file is embedded: `tokens_done` of its `tokens_total` tokens."""
        with self._lock:
            self._partial[doc_id] = (tokens_done, tokens_total)
        self._refresh_bar()

    def advance(self, what: str, doc_id: str, tokens: int = 0) -> None:
        """One file finished (stored, unchanged or failed)."""
        with self._lock:
            self._partial.pop(doc_id, None)
            self.done += 1
            self.tokens += tokens
        if self._bar is not None:
            self._refresh_bar()
            return
        # one line per stored document; skips and failures are logged where they happen
        if what == "stored":
            log.info("stored %s (%d tokens) %s", doc_id, tokens, self.line())
            self._last_line = self._clock()

    def _refresh_bar(self) -> None:
        if self._bar is None:
            return
        with self._lock:
            self._bar.n = round(self.files, 2)
            self._bar.set_postfix_str(f"{self.rate():,.0f} tok/s", refresh=False)
            self._bar.refresh()

    def tick(self) -> bool:
        """Log a progress line if nothing was logged for `every_s` seconds; True if it did."""
        if self._bar is not None or self._clock() - self._last_line < self.every_s:
            return False
        with self._lock:
            working = ", ".join(sorted(self._partial)) or "-"
            msg = f"progress {self.line()}; working on {working}"
        log.info(msg)
        self._last_line = self._clock()
        return True

    def start(self) -> None:
        """Start the heartbeat thread (non-terminal runs only)."""
        if self._bar is not None or self._beat is not None:
            return

        def beat() -> None:
            while not self._stop.wait(min(1.0, self.every_s / 4)):
                self.tick()

        self._beat = threading.Thread(target=beat, name="chunkless-progress", daemon=True)
        self._beat.start()

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2.0)
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


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event, reader: threading.Thread | None = None) -> bool:
    """Blocking put that gives up when the job is stopping or the `reader` stage died (no wait forever on it)."""
    while not stop.is_set():
        if reader is not None and not reader.is_alive():
            return False
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
    id_from: Path | None = None,
    doc_id: str | None = None,
) -> IngestReport:
    """Ingest every supported file under `paths`; bad files are reported and skipped, never fatal.

    The model is loaded only when some file needs embedding, so re-running over an unchanged
    corpus costs file hashing and one read of the document headers. `progress` shows a tqdm bar;
    otherwise each stored document is an INFO log line with files done, tokens/s and ETA, and a
    heartbeat line follows any silence of `HEARTBEAT_S` seconds.

    Args:
        paths: files and folders to ingest.
        settings: the run's settings (store, model).
        embedder: a loaded embedder; loaded from `settings` when a file needs one.
        on_failure: called with each failure as it happens.
        progress: draw a progress bar (a terminal) instead of log lines.
        id_from: doc_ids relative to this folder instead of absolute paths (`indexer.discover`).
        doc_id: the doc_id of the one file `paths` name.
        store: an open store to write into (the service shares its one handle between searches and
            ingest jobs); it is flushed but left open. Without it the job opens, or creates, and closes its own.

    Returns:
        What the run did; a file whose doc_id names another file's stored document is a failure
        (DocIdCollisionError, both paths named) and the other files go on.

    Raises:
        InputError: `doc_id` given for more than one file.
        StoreError: the store cannot be opened or does not match the model.
    """
    t0 = time.perf_counter()
    found = discover(paths, id_from, doc_id)  # a walk, no reads: gives the progress bar its total
    own_store = store is None
    if store is None:
        store, embedder = _open(settings, embedder)
    elif embedder is not None:
        e, where = embedder, f"collection '{settings.store.collection}'"
        store.meta.check(e.name, e.dim, None, where, backend=e.backend, vector_kind=e.vector_kind)
    report = IngestReport()
    lock = threading.Lock()  # report and callbacks are touched by all three stages
    bar = Progress(len(found.files) + len(found.failures), progress)

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
    bar.start()
    try:
        # on a server another worker may be between a document's segments and its header right now
        removed = store.remove_orphans(min_age_s=SERVER_ORPHAN_GRACE_S if settings.store.url else 0.0)
        if removed:
            log.info("removed %d orphan segments left by an interrupted run", removed)
        stored = _Stored(store.headers())

        def load() -> None:
            for item in found.failures:
                fail(item.path, item.reason)
            for f in found.files:
                if stop.is_set():
                    return
                path, did = f.path, f.doc_id
                try:
                    digest = file_hash(path)
                    if stored.unchanged(did, path, digest):
                        with lock:
                            report.skipped_unchanged += 1
                        bar.advance("unchanged", did)
                        continue
                    holder = stored.other_holder(did, path)
                    if holder is not None:
                        fail(str(path), collision_reason(did, holder, path), did)
                        continue
                    doc = load_file(path, did, digest)
                except InputError as e:
                    fail(e.path, e.reason, did)
                    continue
                except OSError as e:  # vanished or unreadable between the walk and the read
                    fail(str(path), f"cannot read file ({e}); check it exists and is readable", did)
                    continue
                if not _put(docs, doc, stop):
                    return
            _put(docs, _DONE, stop)

        def write() -> None:
            broken: set[str] = set()  # documents written in parts whose write failed part-way
            part_bytes: dict[str, int] = {}
            while True:
                item = embedded.get()
                if item is _DONE:
                    return
                if isinstance(item, PartWrite | PartCommit):
                    _write_part(item, store, broken, part_bytes, record, fail)
                    continue
                for emb in item:
                    _write_one(emb, store, record, fail)

        def record(d: LoadedDocument, written: Written, n_tokens: int) -> None:
            """Bookkeeping once a document's header is committed."""
            replaced, older = stored.stored(d.doc_id, d.source, d.content_hash)
            for old in older:  # the same file under an earlier id scheme: the new document replaces it
                store.delete_document(old)
                log.info("removed %s: the same file %s is now stored as %s", old, d.source, d.doc_id)
            with lock:
                report.bytes_stored += written.bytes
                report.replaced += int(replaced)
                report.documents += 1
                report.tokens += n_tokens
                report.segments += written.segments
            bar.advance("stored", d.doc_id, n_tokens)

        part_tokens = settings.model.batch_tokens  # a long document is embedded one batch's worth at a time
        loader, writer = _Stage("chunkless-load", load), _Stage("chunkless-write", write)
        loader.start()
        writer.start()
        for batch in _batches(docs, settings.model.batch_tokens, loader):
            writer.check()
            if embedder is None:
                embedder = load_embedder(settings)
                e, where = embedder, f"collection '{settings.store.collection}'"
                store.meta.check(e.name, e.dim, None, where, backend=e.backend, vector_kind=e.vector_kind)
            flags = [_part_wise(d, embedder, part_tokens) for d in batch]
            long_docs = [d for d, f in zip(batch, flags, strict=True) if f]
            short = [d for d, f in zip(batch, flags, strict=True) if not f]
            out = _embed(short, embedder, fail) if short else []
            out = with_sentence_vectors(out, embedder, store, settings.spans.boundary)  # opt-in; model thread
            if out and not _put(embedded, out, stop, writer):
                break
            if not all(
                _embed_parts(d, embedder, settings, store, embedded, stop, writer, bar, fail) for d in long_docs
            ):
                break
        writer.check()  # a writer that died while the model waited to hand it work
        loader.check()
        _put(embedded, _DONE, stop, writer)
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


class _Stored:
    """The store's live documents as the run sees them: doc_id -> (version, source), kept current by the writer."""

    def __init__(self, headers: dict[str, DocHeader]) -> None:
        self._lock = threading.Lock()
        self.docs = {d: (h.version, h.source) for d, h in headers.items()}

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
    record: Callable[[LoadedDocument, Written, int], None],
    fail: Callable[[str, str, str], None],
) -> None:
    d = emb.doc
    if emb.n_tokens == 0:
        fail(d.source, "no tokens after tokenizing; the file holds no indexable text", d.doc_id)
        return
    try:
        written = store.write_document(emb)
        record(d, written, emb.n_tokens)
    except StorageFaultError:
        raise  # a full or read-only disk is no file's fault: the run ends with it (exit 5)
    except ChunklessError as e:
        fail(d.source, str(e), d.doc_id)


def _part_wise(doc: LoadedDocument, embedder: TokenEmbedder, part_tokens: int) -> bool:
    """Whether `doc` is embedded and written part by part: longer than one part, on a model that can."""
    return isinstance(embedder, WindowedModel) and len(doc.text) // CHARS_PER_TOKEN > part_tokens


def _embed_parts(
    doc: LoadedDocument,
    embedder: TokenEmbedder,
    settings: Settings,
    store: TokenStore,
    embedded: queue.Queue[Any],
    stop: threading.Event,
    writer: threading.Thread,
    bar: Progress,
    fail: Callable[[str, str, str], None],
) -> bool:
    """Embed a long document part by part, handing each part's segments to the writer; False if stopping."""
    assert isinstance(embedder, WindowedModel)  # _part_wise chose this route only for it
    parts = embed_in_parts(
        doc,
        HFWindows(embedder),
        settings.model.batch_tokens,
        store.meta.layout.pool,
        store.segment_rows,
        progress=lambda done, total: bar.working(doc.doc_id, done, total),
    )
    try:
        for item in parts:
            if not _put(embedded, item, stop, writer):
                return False
    except InputError as e:
        fail(e.path, e.reason, doc.doc_id)
    except (ChunklessError, ValueError, RuntimeError, IndexError) as e:
        # segments already written are orphans no search sees; the next run removes them
        fail(doc.source, f"cannot embed ({type(e).__name__}: {e})", doc.doc_id)
    return True


def _write_part(
    item: PartWrite | PartCommit,
    store: TokenStore,
    broken: set[str],
    part_bytes: dict[str, int],
    record: Callable[[LoadedDocument, Written, int], None],
    fail: Callable[[str, str, str], None],
) -> None:
    d = item.doc
    if d.doc_id in broken:
        return
    try:
        if isinstance(item, PartWrite):
            if item.first:
                sample = np.concatenate([s.vectors for s in item.segments])
                store.begin_document(d, store.meta.dim, sample, item.n_rows, item.n_segments)
            part_bytes[d.doc_id] = part_bytes.get(d.doc_id, 0) + store.write_segments(d, item.segments)
            return
        store.commit_document(d, item.pooled, item.n_tokens, item.n_rows, item.n_segments)
        record(d, Written(part_bytes.pop(d.doc_id, 0), item.n_segments), item.n_tokens)
    except StorageFaultError:
        raise  # as in _write_one: the run ends with it
    except ChunklessError as e:
        broken.add(d.doc_id)
        part_bytes.pop(d.doc_id, None)
        fail(d.source, str(e), d.doc_id)
