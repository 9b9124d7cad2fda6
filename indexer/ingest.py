"""The ingest run: discover -> admit -> read -> embed -> write, as a bounded three-stage pipeline.

    loader thread --(docs queue)--> embedding (calling thread) --(embedded queue)--> writer thread

`discover` walks the paths and gives each file its doc_id; the loader admits each file
(`indexer.admit`: type, content hash, unchanged, collision, encryption) before any embedding, so a
file the store already holds costs a hash, and reads the admitted ones (`indexer.reading`); the
model runs in the calling thread on batches sized by tokens, a long document part by part where the
model can (`indexer.long_documents`); the writer stores each document segments-first, header-last
(`TokenStore.write_document`), so a document becomes visible to search only when complete, even if
the process is killed. Both queues are bounded, so memory stays flat however large the corpus, and
parsing, embedding and writing overlap.

A bad file (unreadable, corrupt, empty, undecodable, or one the model or store rejects) is reported
with its reason and skipped; only a broken store or model stops the run.

While it runs, the run can serve other processes' reads of the store it holds (`reads`, a
`ReadsServer`: `chunkless ingest` passes `retriever.serve.holder.ReadEndpoint`), so a search of the
same embedded store during a long ingest is answered from the documents committed so far.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.admit import Admission
from indexer.discover import Discovery, FoundFile, discover
from indexer.embedders import TokenEmbedder, load_embedder
from indexer.long_documents import PartCommit, PartWrite, embed_in_parts
from indexer.progress import Tally
from indexer.reading import read_file
from indexer.sentence_vectors import with_part_sentence_vectors, with_sentence_vectors
from indexer.store import TokenStore, WriteTarget, Written, check_embedder, open_or_create_store, open_store
from schemas.errors import ChunklessError, InputError, StorageFaultError, StoreNotFoundError
from schemas.models import EmbeddedDocument, IngestFailure, IngestReport, LoadedDocument
from schemas.settings import Settings

# the run's lines (progress, skipped files) share one logger name; indexer.progress logs under it too
log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # English BPE averages ~4 characters a token: enough to size batches before tokenizing
LOAD_QUEUE_DOCS = 64  # parsed documents waiting for the model
WRITE_QUEUE_BATCHES = 2  # embedded batches waiting for the store: one being written, one ready
SERVER_ORPHAN_GRACE_S = 3600.0  # far longer than any one document's write; older orphans are a dead writer's
_DONE = object()
# a tokenizer or model that rejects a document: that document fails, the run goes on
_EMBED_ERRORS = (ChunklessError, ValueError, RuntimeError, IndexError)
# what the embedding stage hands the writing stage: short documents embedded whole, or a long one's parts
WriteItem = list[EmbeddedDocument] | PartWrite | PartCommit


@dataclass(frozen=True)
class ModelIdentity:
    """What a new collection records of its model (and checks every later model against)."""

    name: str
    dim: int
    pooling: str
    backend: str
    vector_kind: str

    @classmethod
    def of(cls, embedder: TokenEmbedder) -> ModelIdentity:
        """The identity of a loaded model."""
        return cls(embedder.name, embedder.dim, embedder.pooling, embedder.backend, embedder.vector_kind)


def open_for_writing(settings: Settings, model: Callable[[], ModelIdentity]) -> TokenStore:
    """The collection an ingest run writes: opened if it exists, else created for the model `model()` names.

    An existing collection knows its dimension, so `model` is called only to create one: an unchanged
    corpus never loads the model. Every check a run makes on opening (model, dtype, layout, sentence
    vectors) applies as it always has.

    Args:
        settings: the run's settings (store, model).
        model: loads (or asks a worker for) the model's identity; called only when the collection is new.

    Returns:
        The open store, writing segments of `settings.store.segment_tokens` rows.

    Raises:
        StoreMismatchError: the collection was made with another model or layout.
        StoreBusyError: another process holds the embedded store.
        ServerError: the Qdrant server cannot be reached or refused the key.
    """
    try:
        existing = open_store(settings.store)
    except StoreNotFoundError:
        m = model()
        return open_or_create_store(
            settings.store, m.name, m.dim, m.pooling, m.backend, m.vector_kind, settings.spans.boundary
        )
    # let open_or_create_store apply every check (model, dtype, layout) as it always does
    meta = existing.meta
    existing.close()
    return open_or_create_store(settings.store, settings.model.model, meta.dim, meta.pooling)


def sweep_orphans(store: TokenStore, settings: Settings) -> int:
    """Remove the segments a killed run left with no header, before a run writes anything.

    On a server another worker may be between a document's segments and its header right now: only
    orphans older than `SERVER_ORPHAN_GRACE_S` go there.

    Returns:
        How many segments were removed.
    """
    removed = store.remove_orphans(min_age_s=SERVER_ORPHAN_GRACE_S if settings.store.url else 0.0)
    if removed:
        log.info("removed %d orphan segments left by an interrupted run", removed)
    return removed


def admit_file(admission: Admission, tally: Tally, f: FoundFile) -> str | None:
    """Admit one discovered file (`Admission.admit`), reporting a refused or unchanged file to `tally`.

    Args:
        admission: the store's live documents.
        tally: the run's tally.
        f: the file and its doc_id.

    Returns:
        Its content hash when it is to be read and embedded; None when it was refused or is unchanged.
    """
    try:
        digest = admission.admit(f.path, f.doc_id)  # None: the store holds this content already
    except InputError as e:
        tally.failed(e.path, e.reason, f.doc_id)
        return None
    except OSError as e:  # vanished or unreadable since the walk
        tally.failed(str(f.path), _unreadable(e), f.doc_id)
        return None
    if digest is None:
        tally.unchanged(f.doc_id)
    return digest


def read_admitted(path: Path, doc_id: str, digest: str) -> LoadedDocument:
    """Read an admitted file into the document to embed.

    Args:
        path: the file, as discovered.
        doc_id: its doc_id.
        digest: its content hash, from admission (the document's version).

    Returns:
        The document.

    Raises:
        InputError: the file cannot be read or parsed (corrupt, empty, undecodable), or it vanished or
            became unreadable since it was admitted; names the file and what to do.
    """
    try:
        return read_file(path, doc_id, digest)
    except OSError as e:
        raise InputError(str(path), _unreadable(e)) from e


def _unreadable(e: OSError) -> str:
    return f"cannot read file ({e}); check it exists and is readable"


class ReadsServer(Protocol):
    """Serves other processes' reads of the store a run holds (`retriever.serve.holder.ReadEndpoint`)."""

    def shared(self, embedder: TokenEmbedder) -> TokenEmbedder:
        """The model as the run and the reads use it, one lock around every call (called once, at load)."""
        ...

    def start(self, store: TokenStore, model: Callable[[], TokenEmbedder]) -> None:
        """Serve reads of `store`; `model()` gives the run's shared model, loading it if the run has not."""
        ...

    def stop(self) -> None:
        """Stop serving (before the run closes the store)."""
        ...


def build_rank_index(store: TokenStore, report: IngestReport) -> None:
    """Build the ranking's int8 copy after documents were stored; a failure is a note, never lost documents."""
    t0 = time.perf_counter()
    try:
        built = store.build_rank_index()
    except StorageFaultError as e:
        report.index_note = (
            f"{e}. This run's documents are stored too; until 'chunkless compact' runs with that room, "
            "searches rank segments without the int8 copy (the same results, slower)"
        )
        log.warning("%s", report.index_note)
        return
    if built:
        report.index_seconds = time.perf_counter() - t0


def ingest(
    paths: Iterable[Path],
    settings: Settings,
    embedder: TokenEmbedder | None = None,
    on_failure: Callable[[IngestFailure], None] | None = None,
    progress: bool = False,
    store: TokenStore | None = None,
    id_from: Path | None = None,
    doc_id: str | None = None,
    reads: ReadsServer | None = None,
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
            ingest jobs); it is flushed but left open. Without it the run opens, or creates, and closes its own.
        reads: serve other processes' reads of the embedded store while the run holds it (see `ReadsServer`).

    Returns:
        What the run did; a file whose doc_id names another file's stored document is a failure
        (DocIdCollisionError, both paths named) and the other files go on.

    Raises:
        InputError: `doc_id` given for more than one file.
        StoreError: the store cannot be opened or does not match the model.
    """
    t0 = time.perf_counter()
    report = IngestRun(settings, embedder, store, on_failure, progress, reads).run(paths, id_from, doc_id)
    report.seconds = time.perf_counter() - t0
    return report


class IngestRun:
    """One ingest run: the store, the model, the queues and the report its stages share.

    The loader thread (`_load`) admits and reads files, the calling thread embeds them (`_embed_all`),
    the writer thread (`_write`) stores them; all three report to the run's `Tally` (report, progress,
    failure callback) and the writer keeps the `Admission`'s view of the store current. A run is used
    once: `run` opens the store and starts the stages, and its queues and stop flag are spent when it
    returns.

    An engine that moves the stages to other processes (`indexer.distributed`) uses the same pieces:
    `attach` gives a run its collection, tally and (for writing) store and admission without `run`;
    `embed_batch` embeds one batch of read documents into write items, and `write_item` stores one.

    Args:
        settings: the run's settings (store, model, span boundary rule).
        embedder: a loaded embedder; loaded from `settings` when a file needs one.
        store: an open store to write into, left open; None: the run opens (or creates) its own and closes it.
        on_failure: called with each failure as it happens.
        bar: draw a progress bar (a terminal) instead of log lines.
        reads: serves other processes' reads of the store while the run holds it (an embedded store the
            run opens itself; a given store's opener, or a server, serves its own readers).
    """

    def __init__(
        self,
        settings: Settings,
        embedder: TokenEmbedder | None = None,
        store: TokenStore | None = None,
        on_failure: Callable[[IngestFailure], None] | None = None,
        bar: bool = False,
        reads: ReadsServer | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reads = reads if store is None and settings.store.url is None else None
        self._shared: TokenEmbedder | None = None  # the model as the run uses it (shared with the reads)
        self._model_lock = threading.Lock()  # the run's thread and a reader's first search may both load it
        self._given_store = store
        self.on_failure = on_failure
        self.bar = bar
        self.where = f"collection '{settings.store.collection}'"  # what a mismatch message names
        self._stop = threading.Event()
        self._docs: queue.Queue[Any] = queue.Queue(LOAD_QUEUE_DOCS)
        self._embedded: queue.Queue[Any] = queue.Queue(WRITE_QUEUE_BATCHES)
        self._broken: set[str] = set()  # documents written in parts whose write failed part-way (writer only)
        self._part_bytes: dict[str, int] = {}  # bytes written so far per document written in parts (writer only)

    def run(self, paths: Iterable[Path], id_from: Path | None = None, doc_id: str | None = None) -> IngestReport:
        """Discover, admit, read, embed and write every supported file under `paths`.

        Args:
            paths: files and folders to ingest.
            id_from: doc_ids relative to this folder instead of absolute paths (`indexer.discover`).
            doc_id: the doc_id of the one file `paths` name.

        Returns:
            The report; `ingest` sets its `seconds`.

        Raises:
            InputError: `doc_id` given for more than one file.
            StoreError: the store cannot be opened or does not match the model; a broken store or model
                met mid-run.
        """
        found = discover(paths, id_from, doc_id)  # a walk, no reads: gives the progress bar its total
        own_store = self._given_store is None
        store = self._open()
        tally = Tally(len(found.files) + len(found.failures), self.bar, self.on_failure)
        tally.progress.start()
        try:
            sweep_orphans(store, self.settings)
            self.attach(tally, store.target, store, Admission(store.headers()))
            if self.reads is not None:  # after attach: a read may load the model, which checks it against the target
                self.reads.start(store, self._model)
            for refused in found.failures:  # the walk's refusals first, before any file is read
                self.tally.failed(refused.path, refused.reason)
            loader = _Stage("chunkless-load", lambda: self._load(found))
            writer = _Stage("chunkless-write", self._write)
            loader.start()
            writer.start()
            self._embed_all(loader, writer)
            writer.check()  # a writer that died while the model waited to hand it work
            loader.check()
            _put(self._embedded, _DONE, self._stop, writer)
            while writer.is_alive():  # join in slices: a writer error must not hide behind a blocked put
                writer.join(timeout=0.5)
            writer.check()
            store.flush()
            if tally.report.documents:
                build_rank_index(store, tally.report)
        finally:
            self._stop.set()
            if self.reads is not None:
                self.reads.stop()  # answers the searches in flight, then the store can close
            tally.progress.close()
            if own_store:
                store.close()
        return tally.report

    def attach(
        self, tally: Tally, target: WriteTarget, store: TokenStore | None = None, admission: Admission | None = None
    ) -> None:
        """Give the run what its stages share, without `run`: for an engine that drives the stages itself.

        Args:
            tally: where each file's outcome is reported.
            target: the collection documents are embedded for (`TokenStore.target`).
            store: the open store `write_item` writes to (None: this process only embeds).
            admission: the store's live documents, kept current by `write_item` (None: only embeds).
        """
        self.tally, self.target = tally, target
        if store is not None:
            self.store = store
        if admission is not None:
            self.admission = admission

    # --- setup ------------------------------------------------------------------------------------
    def _open(self) -> TokenStore:
        """The store to write: the one given (checked against a given embedder), or opened or created.

        Creating a collection needs the model's dimension, so the embedder is loaded then; an existing
        collection knows its dimension, and loading the model waits until a file needs it.
        """
        store, settings = self._given_store, self.settings
        if store is not None:
            if self.embedder is not None:
                check_embedder(store.meta, self.embedder, self.where)
            return store
        if self.embedder is None:
            return open_for_writing(settings, self._load_identity)
        e = self.embedder
        return open_or_create_store(
            settings.store, e.name, e.dim, e.pooling, e.backend, e.vector_kind, settings.spans.boundary
        )

    def _load_identity(self) -> ModelIdentity:
        self.embedder = load_embedder(self.settings)
        return ModelIdentity.of(self.embedder)

    # --- loader thread: admit, then read ----------------------------------------------------------
    def _load(self, found: Discovery) -> None:
        """Admit each discovered file, read the admitted ones and hand them to the model, in walk order."""
        for f in found.files:
            if self._stop.is_set():
                return
            digest = admit_file(self.admission, self.tally, f)
            if digest is None:
                continue
            try:
                doc = read_admitted(f.path, f.doc_id, digest)
            except InputError as e:
                self.tally.failed(e.path, e.reason, f.doc_id)
                continue
            if not _put(self._docs, doc, self._stop):
                return
        _put(self._docs, _DONE, self._stop)

    # --- calling thread: embed --------------------------------------------------------------------
    def _embed_all(self, loader: _Stage, writer: _Stage) -> None:
        """Embed what the loader reads, batch by batch, and hand it to the writer; returns when done or stopping."""
        for batch in _batches(self._docs, self.settings.model.batch_tokens, loader):
            writer.check()
            for item in self.embed_batch(batch):
                if not _put(self._embedded, item, self._stop, writer):
                    return

    def embed_batch(self, batch: list[LoadedDocument]) -> Iterator[WriteItem]:
        """Embed one batch of read documents into what the writing stage stores, in order.

        Short documents come as one list (with their sentence vectors when the collection keeps them);
        each long one, on a model that can, as its parts and then its commit. A document the model
        rejects is reported to the tally and left out; the model is loaded on first use.

        Args:
            batch: documents, about `batch_tokens` tokens in all.

        Yields:
            Write items for `write_item`.
        """
        embedder = self._model()
        part_tokens = self.settings.model.batch_tokens  # a long document is embedded one batch's worth at a time
        flags = [self._part_wise(d, embedder, part_tokens) for d in batch]
        long_docs = [d for d, f in zip(batch, flags, strict=True) if f]
        short = [d for d, f in zip(batch, flags, strict=True) if not f]
        out = self._embed(short, embedder) if short else []
        # opt-in; in the model's thread
        out = with_sentence_vectors(out, embedder, self.target, self.settings.spans.boundary)
        if out:
            yield out
        for d in long_docs:
            yield from self._embed_parts(d, embedder)

    def _model(self) -> TokenEmbedder:
        """The embedder, loaded (and checked against the collection) when the first file, or the first
        search a reader sends, needs it; wrapped to be shared with the reads when the run serves them."""
        with self._model_lock:
            if self._shared is None:
                if self.embedder is None:
                    self.embedder = load_embedder(self.settings)
                    check_embedder(self.target.meta, self.embedder, self.where)
                self._shared = self.embedder if self.reads is None else self.reads.shared(self.embedder)
            return self._shared

    @staticmethod
    def _part_wise(doc: LoadedDocument, embedder: TokenEmbedder, part_tokens: int) -> bool:
        """Whether `doc` is embedded and written part by part: longer than one part, on a model that can."""
        return embedder.capabilities.part_wise and len(doc.text) // CHARS_PER_TOKEN > part_tokens

    def _embed(self, batch: list[LoadedDocument], embedder: TokenEmbedder) -> list[EmbeddedDocument]:
        """Embed a batch; if it fails, embed one by one so a single bad document fails alone."""
        try:
            return embedder.embed_documents(batch)
        except _EMBED_ERRORS as e:
            if len(batch) == 1:
                d = batch[0]
                self.tally.failed(d.source, f"cannot embed ({type(e).__name__}: {e})", d.doc_id)
                return []
            log.info("a batch of %d documents failed to embed (%s); retrying one by one", len(batch), e)
        out: list[EmbeddedDocument] = []
        for d in batch:
            try:
                out += embedder.embed_documents([d])
            except _EMBED_ERRORS as e:
                self.tally.failed(d.source, f"cannot embed ({type(e).__name__}: {e})", d.doc_id)
        return out

    def _embed_parts(self, doc: LoadedDocument, embedder: TokenEmbedder) -> Iterator[PartWrite | PartCommit]:
        """Embed a long document part by part, yielding each part's segments, then its commit."""
        parts = embed_in_parts(
            doc,
            embedder.windows(),
            self.settings.model.batch_tokens,
            self.target.meta.layout.pool,
            self.target.segment_rows,
            progress=lambda done, total: self.tally.progress.working(doc.doc_id, done, total),
        )
        # in the model's thread, as for short documents
        parts = with_part_sentence_vectors(parts, embedder, self.target, self.settings.spans.boundary)
        try:
            yield from parts
        except InputError as e:
            self.tally.failed(e.path, e.reason, doc.doc_id)
        except _EMBED_ERRORS as e:
            # segments already written are orphans no search sees; the next run removes them
            self.tally.failed(doc.source, f"cannot embed ({type(e).__name__}: {e})", doc.doc_id)

    # --- writer thread: write ---------------------------------------------------------------------
    def _write(self) -> None:
        while True:
            item = self._embedded.get()
            if item is _DONE:
                return
            self.write_item(item)

    def write_item(self, item: WriteItem) -> None:
        """Store one item of the embedding stage: documents whole, or a long document's part or commit.

        Each stored document is reported to the tally (and the admission) once its header is committed;
        a document the store refuses is reported failed.

        Raises:
            StorageFaultError: the disk is full or read-only: no file's fault, the run ends with it.
        """
        if isinstance(item, PartWrite | PartCommit):
            self._write_part(item)
            return
        for emb in item:
            self._write_one(emb)

    def _write_one(self, emb: EmbeddedDocument) -> None:
        d = emb.doc
        if emb.n_tokens == 0:
            self.tally.failed(d.source, "no tokens after tokenizing; the file holds no indexable text", d.doc_id)
            return
        try:
            written = self.store.write_document(emb)
            self._record(d, written, emb.n_tokens)
        except StorageFaultError:
            raise  # a full or read-only disk is no file's fault: the run ends with it (exit 5)
        except ChunklessError as e:
            self.tally.failed(d.source, str(e), d.doc_id)

    def _write_part(self, item: PartWrite | PartCommit) -> None:
        d, store = item.doc, self.store
        if d.doc_id in self._broken:
            return
        try:
            if isinstance(item, PartWrite):
                if item.first:
                    sample = np.concatenate([s.vectors for s in item.segments])
                    store.begin_document(d, store.meta.dim, sample, item.n_rows, item.n_segments)
                written = store.write_segments(d, item.segments, item.sentences)
                self._part_bytes[d.doc_id] = self._part_bytes.get(d.doc_id, 0) + written
                return
            store.commit_document(d, item.pooled, item.n_tokens, item.n_rows, item.n_segments)
            self._record(d, Written(self._part_bytes.pop(d.doc_id, 0), item.n_segments), item.n_tokens)
        except StorageFaultError:
            raise  # as in _write_one: the run ends with it
        except ChunklessError as e:
            self._broken.add(d.doc_id)
            self._part_bytes.pop(d.doc_id, None)
            self.tally.failed(d.source, str(e), d.doc_id)

    def _record(self, d: LoadedDocument, written: Written, n_tokens: int) -> None:
        """Bookkeeping once a document's header is committed."""
        replaced, older = self.admission.stored(d.doc_id, d.source, d.content_hash)
        for old in older:  # the same file under an earlier id scheme: the new document replaces it
            self.store.delete_document(old)
            log.info("removed %s: the same file %s is now stored as %s", old, d.source, d.doc_id)
        self.tally.stored(d.doc_id, written, n_tokens, replaced)


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
    """Blocking put that gives up when the run is stopping or the `reader` stage died (no wait forever on it)."""
    while not stop.is_set():
        if reader is not None and not reader.is_alive():
            return False
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


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
