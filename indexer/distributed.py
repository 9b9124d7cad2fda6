"""Ingest on a Ray cluster: the run of `indexer.ingest`, its stages spread over machines by Ray Data.

    driver      discover -> admit                     (indexer.discover, indexer.admit: as a local run)
    Ray Data    read (CPU tasks) -> embed (an actor pool, one model per actor)
    write       each embedding actor writes to a Qdrant server itself; an embedded store (Edge, or
                qdrant-client's local mode), which one process may open, is written by ONE writer
                actor placed on the driver's node

Nothing here is a second ingest: the driver walks and admits files with `discover` and `admit_file`
(content-hash skip, doc_id rules, collision refusal), read tasks call `read_admitted`, embedding actors
call `IngestRun.embed_batch` and writers `IngestRun.write_item` (which calls `TokenStore.write_document`:
segments first, header last). Each file's outcome (stored, failed) travels back to the driver's
`Tally`, which draws the progress (files, tokens, tokens/s, ETA) and builds the report with the same
failures, word for word, a local run gives.

Faults. Ray retries a read task, and restarts an embedding actor or the writer actor whose process
died, running its batch again: point ids are deterministic (`uuid5(doc_id, version, i)`), so a batch
written twice stores the same points, and a document is visible only once its header is written. A
killed driver takes its job's workers with it; the rerun sweeps the orphan segments (`sweep_orphans`)
and skips what is stored (content hash), as a local rerun does.

Every machine of the cluster needs chunkless (`pip install 'chunkless[ray]'`), the model folder at
the same path, and the files at the paths the driver names (a shared file system); an embedded store
lives on the driver's machine.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.admit import Admission
from indexer.discover import discover
from indexer.embedders import load_embedder
from indexer.ingest import (
    CHARS_PER_TOKEN,
    WRITE_QUEUE_BATCHES,
    IngestRun,
    ModelIdentity,
    WriteItem,
    admit_file,
    build_rank_index,
    open_for_writing,
    read_admitted,
    sweep_orphans,
)
from indexer.progress import Tally
from indexer.store import WriteTarget, Written
from indexer.store.server import LOCAL_PREFIX, is_local
from schemas.errors import ChunklessError, InputError, SettingsError
from schemas.models import IngestFailure, IngestReport, LoadedDocument
from schemas.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("indexer.ingest")  # the run's lines, as a local run logs them

INSTALL_HINT = "pip install 'chunkless[ray]'"
READ_CPUS = 0.5  # a read task: parsing is CPU work, but half a core each lets reads overlap their I/O
READ_FILES = 4  # files per read task
WRITER_RESTARTS = 4  # the writer actor's process may die this many times in one run


@dataclass(frozen=True)
class RayOptions:
    """How an ingest uses the Ray cluster.

    Attributes:
        address: the cluster (`ray start --head` prints it; "auto": the one started on this machine);
            None: RAY_ADDRESS, else a Ray started for this run alone.
        actors: embedding actors, one model each; None: one per GPU, else one per `cpus_per_actor` CPUs
            of the cluster after one CPU kept for reading.
        cpus_per_actor: CPUs each embedding actor asks for (and the torch threads it runs on a CPU).
        gpus_per_actor: GPUs each embedding actor asks for; None: 1 where the cluster has GPUs, else 0.
        direct_writes: each embedding actor writes to the store itself; None: yes on a Qdrant server, no
            (one writer actor) for an embedded store or qdrant-client's local mode, which one process may open.
        batch_docs: read documents per call of an embedding actor: the unit Ray runs again after a fault,
            and how often the driver hears of stored files (its progress and ETA move per call).
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    direct_writes: bool | None = None
    batch_docs: int = 16


def ray_ingest(
    paths: Iterable[Path],
    settings: Settings,
    options: RayOptions | None = None,
    on_failure: Callable[[IngestFailure], None] | None = None,
    progress: bool = False,
    id_from: Path | None = None,
    doc_id: str | None = None,
) -> IngestReport:
    """Ingest every supported file under `paths` as one Ray Data job; `indexer.ingest.ingest`'s guarantees hold.

    Content-hash skip, doc_id rules and collision refusal (decided on the driver before any read), a
    document visible only once whole, bad files reported and skipped, the same report. A corpus the
    store holds already needs no cluster: Ray is not even started.

    Args:
        paths: files and folders to ingest (the same paths on every node of the cluster).
        settings: the run's settings (store, model).
        options: the cluster and its actors (`RayOptions`); None: the defaults.
        on_failure: called on the driver with each failure as it is reported.
        progress: draw a progress bar (a terminal) instead of log lines.
        id_from: doc_ids relative to this folder instead of absolute paths (`indexer.discover`).
        doc_id: the doc_id of the one file `paths` name.

    Returns:
        What the run did.

    Raises:
        SettingsError: Ray is not installed, or the actors asked for do not fit the cluster.
        InputError: `doc_id` given for more than one file.
        StoreError: the store cannot be opened, does not match the model, or failed mid-run (a full disk).
        ModelLoadError: an actor cannot load the model.
    """
    t0 = time.perf_counter()
    run = _RayRun(_portable(settings), options or RayOptions(), on_failure, progress)
    report = run.run(paths, id_from, doc_id)
    report.seconds = time.perf_counter() - t0
    return report


def _portable(settings: Settings) -> Settings:
    """The settings with every local path absolute: workers run in folders of their own."""
    over: dict[str, Any] = {"store_path": settings.store.store_path.expanduser().resolve()}
    url = settings.store.url
    if url and url.startswith(LOCAL_PREFIX):
        over["url"] = LOCAL_PREFIX + str(Path(url[len(LOCAL_PREFIX) :]).expanduser().resolve())
    model = Path(settings.model.model).expanduser()
    if model.is_dir():
        over["model"] = str(model.resolve())
    return settings.updated(**over)


# --- what travels between the stages -----------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One file's end in a worker: stored (its header is committed) or failed (with the reason)."""

    doc_id: str
    path: str = ""
    reason: str = ""  # empty: stored
    tokens: int = 0
    bytes: int = 0
    segments: int = 0


class _Outcomes(Tally):
    """A worker's tally: each file's outcome kept, for the driver's tally, instead of reported here."""

    def __init__(self) -> None:
        super().__init__(0, bar=False)
        self._kept: list[Outcome] = []
        self._kept_lock = threading.Lock()

    def failed(self, path: str, reason: str, doc_id: str = "") -> None:
        with self._kept_lock:
            self._kept.append(Outcome(doc_id or path, path=path, reason=reason))

    def stored(self, doc_id: str, written: Written, n_tokens: int, replaced: bool) -> None:
        with self._kept_lock:
            self._kept.append(Outcome(doc_id, tokens=n_tokens, bytes=written.bytes, segments=written.segments))

    def unchanged(self, doc_id: str) -> None:
        raise AssertionError("admission, and so the unchanged files, belong to the driver")

    def drain(self) -> list[Outcome]:
        with self._kept_lock:
            out, self._kept = self._kept, []
        return out


def _table(outcomes: list[Outcome]) -> pa.Table:
    """Outcomes as an Arrow table (typed even when empty: a batch may finish no file)."""
    import pyarrow as pa

    schema = pa.schema(
        [("doc_id", pa.string()), ("path", pa.string()), ("reason", pa.string())]
        + [(n, pa.int64()) for n in ("tokens", "bytes", "segments")]
    )
    return pa.Table.from_pylist([asdict(o) for o in outcomes], schema=schema)


# --- read: Ray Data tasks ------------------------------------------------------------------------------
def read_files(batch: pa.Table) -> pa.Table:
    """Read admitted files into documents (pickled), or the reason each could not be read.

    Args:
        batch: columns `path`, `doc_id`, `digest` (the content hash admission computed).

    Returns:
        Columns `doc_id`, `path`, `doc` (a pickled `LoadedDocument`; empty when it failed) and `reason`.
    """
    import pyarrow as pa

    ids, paths, docs, reasons = [], [], [], []
    for path, did, digest in zip(*(batch.column(c).to_pylist() for c in ("path", "doc_id", "digest")), strict=True):
        try:
            doc, reason = pickle.dumps(read_admitted(Path(path), did, digest), protocol=5), ""
        except InputError as e:
            doc, reason, path = b"", e.reason, e.path
        ids.append(did)
        paths.append(path)
        docs.append(doc)
        reasons.append(reason)
    docs_col = pa.array(docs, pa.large_binary())  # large: one long document's text may pass 2 GiB in a block
    return pa.table({"doc_id": ids, "path": paths, "doc": docs_col, "reason": pa.array(reasons, pa.string())})


# --- write: one writer actor, or each embedding actor ---------------------------------------------------
class StoreWriter:
    """The writing stage of a run in one process: `IngestRun.write_item` on the store, outcomes kept.

    Used as the one writer actor of an embedded store, and inside each embedding actor that writes to
    a Qdrant server itself. It never sweeps orphans: a writer restarted mid-run must not delete the
    segments of a long document it is halfway through (the driver swept before the run began).

    Args:
        settings: the run's settings (paths absolute).
        docs: the driver's view of the store's live documents (doc_id -> (version, source)).
    """

    def __init__(self, settings: Settings, docs: dict[str, tuple[str, str]]) -> None:
        self.store = open_for_writing(settings, _created_by_driver)
        self.outcomes = _Outcomes()
        self.run = IngestRun(settings, store=self.store)
        self.run.attach(self.outcomes, self.store.target, self.store, Admission.from_docs(docs))

    def write(self, items: list[WriteItem]) -> list[Outcome]:
        """Store items in order; returns the outcomes of the documents they finished."""
        for item in items:
            self.run.write_item(item)
        return self.outcomes.drain()

    def close(self) -> None:
        """Flush and release the store (the embedded store's one-process lock)."""
        self.store.flush()
        self.store.close()


def _created_by_driver() -> ModelIdentity:
    raise AssertionError("the driver creates the collection before any writer opens it")


class _Sink(ABC):
    """Where an embedding actor's write items go, at most `WRITE_QUEUE_BATCHES` ahead of the writing."""

    @abstractmethod
    def submit(self, item: WriteItem) -> list[Outcome]:
        """Hand one item on; returns the outcomes of earlier items that finished meanwhile."""

    @abstractmethod
    def finish(self) -> list[Outcome]:
        """Wait for every item handed on; returns their outcomes."""


class _RemoteSink(_Sink):
    """Items go to the one writer actor; calls from one actor run there in the order they were made."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.pending: deque[Any] = deque()

    def submit(self, item: WriteItem) -> list[Outcome]:
        import ray

        self.pending.append(self.writer.write.remote([item]))
        out: list[Outcome] = []
        while len(self.pending) > WRITE_QUEUE_BATCHES:
            out += ray.get(self.pending.popleft())
        return out

    def finish(self) -> list[Outcome]:
        import ray

        out = [o for ref in self.pending for o in ray.get(ref)]
        self.pending.clear()
        return out


class _DirectSink(_Sink):
    """Items written to the store by this actor, in a writer thread, so embedding and writing overlap."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="chunkless-write")  # one thread: in order
        self.pending: deque[Future[list[Outcome]]] = deque()

    def submit(self, item: WriteItem) -> list[Outcome]:
        self.pending.append(self.thread.submit(self.writer.write, [item]))
        out: list[Outcome] = []
        while len(self.pending) > WRITE_QUEUE_BATCHES:
            out += self.pending.popleft().result()
        return out

    def finish(self) -> list[Outcome]:
        out = [o for f in self.pending for o in f.result()]
        self.pending.clear()
        return out


# --- embed: the Ray Data actor pool ----------------------------------------------------------------------
class EmbedActor:
    """One model on one worker: embeds batches of read documents with `IngestRun.embed_batch` and writes them.

    Ray Data constructs it once per actor and calls it with batches of `RayOptions.batch_docs` read documents;
    it returns every file's outcome (stored, or failed: reading, embedding or writing). Documents are
    grouped into forward batches of about `batch_tokens` tokens, as a local run groups them.

    Args:
        settings: the run's settings (paths absolute).
        target: the collection's layout and segment rows.
        docs: the driver's view of the store's live documents (for a writer of its own).
        writer: the one writer actor's handle; None: this actor writes to the store itself.
        threads: torch threads on a CPU (the CPUs the actor holds).
    """

    def __init__(
        self,
        settings: Settings,
        target: WriteTarget,
        docs: dict[str, tuple[str, str]],
        writer: Any = None,
        threads: int = 1,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.settings = settings
        self.outcomes = _Outcomes()
        self.run = IngestRun(settings)
        self.run.attach(self.outcomes, target)
        self.sink = _RemoteSink(writer) if writer is not None else _DirectSink(StoreWriter(settings, docs))

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[Outcome] = []
        docs: list[LoadedDocument] = []
        for did, path, blob, reason in zip(
            *(batch.column(c).to_pylist() for c in ("doc_id", "path", "doc", "reason")), strict=True
        ):
            if reason:
                out.append(Outcome(did, path=path, reason=reason))
            else:
                docs.append(pickle.loads(blob))
        for group in token_groups(docs, self.settings.model.batch_tokens):
            for item in self.run.embed_batch(group):
                out += self.sink.submit(item)
        out += self.sink.finish()
        return _table(out + self.outcomes.drain())


def token_groups(docs: list[LoadedDocument], batch_tokens: int) -> list[list[LoadedDocument]]:
    """Consecutive documents in groups of about `batch_tokens` tokens (estimated from their length), in order.

    Args:
        docs: read documents.
        batch_tokens: the forward batch's budget (`ModelSettings.batch_tokens`).

    Returns:
        Groups, each at least one document; a group closes once it reaches the budget.
    """
    groups: list[list[LoadedDocument]] = []
    tokens = batch_tokens
    for d in docs:
        if tokens >= batch_tokens:
            groups.append([])
            tokens = 0
        groups[-1].append(d)
        tokens += len(d.text) // CHARS_PER_TOKEN
    return groups


def model_identity(settings: Settings) -> ModelIdentity:
    """The identity of the model `settings` name, loaded where the embedding actors run (a Ray task)."""
    return ModelIdentity.of(load_embedder(settings))


# --- the driver --------------------------------------------------------------------------------------------
@dataclass
class _Resources:
    actors: int
    cpus: float
    gpus: float
    threads: int


@dataclass
class _RayRun:
    """The driver's side of one run: admission, the Ray Data job, and the tally of outcomes."""

    settings: Settings
    options: RayOptions
    on_failure: Callable[[IngestFailure], None] | None
    bar: bool
    _started_ray: bool = False
    _resources: _Resources | None = None
    _seen: set[str] = field(default_factory=set)

    def run(self, paths: Iterable[Path], id_from: Path | None, doc_id: str | None) -> IngestReport:
        found = discover(paths, id_from, doc_id)
        tally = Tally(len(found.files) + len(found.failures), self.bar, self.on_failure)
        tally.progress.start()
        try:
            for refused in found.failures:
                tally.failed(refused.path, refused.reason)
            store = open_for_writing(self.settings, self._identity)
            try:
                sweep_orphans(store, self.settings)
                admission = Admission(store.headers())
                admitted = []
                for f in found.files:
                    digest = admit_file(admission, tally, f)
                    if digest is not None:
                        admitted.append({"path": str(f.path), "doc_id": f.doc_id, "digest": digest})
                target = store.target
            finally:
                store.close()  # the writers open it: an embedded store admits one process
            if admitted:
                self._embed_and_write(admitted, target, admission, tally)
            if tally.report.documents:  # the writers have closed the store: the driver builds the ranking's copy
                store = open_for_writing(self.settings, self._identity)
                try:
                    build_rank_index(store, tally.report)
                finally:
                    store.close()
        finally:
            tally.progress.close()
            if self._started_ray:
                import ray

                ray.shutdown()
        return tally.report

    # --- Ray ----------------------------------------------------------------------------------------
    def _connect(self) -> _Resources:
        """Join (or start) the cluster once; the actors' resources follow from what it has."""
        if self._resources is not None:
            return self._resources
        try:
            import ray
        except ImportError as e:
            raise SettingsError(f"--engine ray needs Ray, which is not installed; {INSTALL_HINT}") from e
        if not ray.is_initialized():
            ray.init(address=self.options.address, log_to_driver=False, logging_level=logging.WARNING)
            self._started_ray = True
        self._resources = self._size(ray.cluster_resources())
        return self._resources

    def _size(self, cluster: dict[str, float]) -> _Resources:
        o = self.options
        cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
        per_gpu = o.gpus_per_actor if o.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
        if o.actors is not None:
            actors = o.actors
        elif per_gpu:
            actors = max(1, int(gpus // per_gpu))
        else:
            actors = max(1, int((cpus - 1) // o.cpus_per_actor))
        need_cpus = actors * o.cpus_per_actor + READ_CPUS
        if actors < 1 or need_cpus > cpus or actors * per_gpu > gpus:
            raise SettingsError(
                f"{actors} embedding actors need {need_cpus:g} CPUs (with reading) and {actors * per_gpu:g} GPUs; "
                f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: ask for fewer actors or add nodes"
            )
        return _Resources(actors, o.cpus_per_actor, per_gpu, max(1, round(o.cpus_per_actor)))

    def _identity(self) -> ModelIdentity:
        """The model's identity from a task placed like an embedding actor (the driver may have no GPU)."""
        import ray

        r = self._connect()
        task = ray.remote(model_identity).options(num_cpus=r.cpus, num_gpus=r.gpus)
        try:
            identity: ModelIdentity = ray.get(task.remote(self.settings))
        except Exception as e:
            raise _unwrapped(e) from None
        return identity

    def _direct(self) -> bool:
        if self.options.direct_writes is not None:
            return self.options.direct_writes
        url = self.settings.store.url
        return bool(url) and not is_local(url)

    def _embed_and_write(
        self, admitted: list[dict[str, str]], target: WriteTarget, admission: Admission, tally: Tally
    ) -> None:
        import ray
        import ray.data
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        r = self._connect()
        ray.data.DataContext.get_current().enable_progress_bars = False  # the run draws its own
        # after `import ray.data`, which sets up its loggers: its per-dataset INFO lines are not the run's
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        docs = dict(admission.docs)
        writer: Any = None  # a Ray actor handle: typed by Ray's stubs only as what it wraps
        if not self._direct():
            # on this node: an embedded store is a folder of this machine
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            actor = ray.remote(StoreWriter).options(
                num_cpus=0,
                scheduling_strategy=here,
                max_restarts=WRITER_RESTARTS,
                max_task_retries=WRITER_RESTARTS,
            )
            writer = actor.remote(self.settings, docs)
        sources = {a["doc_id"]: (a["path"], a["digest"]) for a in admitted}
        try:
            ds: Any = ray.data.from_items(admitted, override_num_blocks=max(1, -(-len(admitted) // READ_FILES)))
            ds = ds.map_batches(read_files, batch_size=READ_FILES, batch_format="pyarrow", num_cpus=READ_CPUS)
            ds = ds.map_batches(
                EmbedActor,
                fn_constructor_kwargs={
                    "settings": self.settings,
                    "target": target,
                    "docs": {} if writer is not None else docs,
                    "writer": writer,
                    "threads": r.threads,
                },
                # a corpus smaller than a batch per actor is still spread over every actor
                batch_size=max(1, min(self.options.batch_docs, -(-len(admitted) // r.actors))),
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=r.actors),
                num_cpus=r.cpus,
                num_gpus=r.gpus,
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.to_pylist():
                    self._tally(Outcome(**row), sources, admission, tally)
            if writer is not None:
                ray.get(writer.close.remote())
        except Exception as e:
            raise _unwrapped(e) from None
        finally:
            if writer is not None:
                ray.kill(writer)

    def _tally(self, o: Outcome, sources: dict[str, tuple[str, str]], admission: Admission, tally: Tally) -> None:
        if o.doc_id in self._seen:  # a batch Ray ran twice reports once: its first outcome stands
            return
        self._seen.add(o.doc_id)
        if o.reason:
            tally.failed(o.path, o.reason, o.doc_id)
            return
        source, version = sources[o.doc_id]
        # replaced or new as the store stood when the run began, however often a batch was run
        replaced, _ = admission.stored(o.doc_id, source, version)
        tally.stored(o.doc_id, Written(o.bytes, o.segments), o.tokens, replaced)


def _unwrapped(e: BaseException) -> BaseException:
    """The chunkless error a worker raised, out of Ray's wrappers, so the CLI prints it in one line."""
    from ray.exceptions import RayTaskError

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ChunklessError):
            return cur
        # a RayTaskError keeps the worker's own exception as its cause
        cur = cur.cause if isinstance(cur, RayTaskError) and cur.cause is not None else cur.__cause__
    return e
