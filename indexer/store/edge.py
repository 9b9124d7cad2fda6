"""PointsBackend over Qdrant Edge: the real Qdrant engine in-process, one shard per collection folder.

Edge (0.9, Python) has no read-only mode: loading a shard writes its WAL (the Rust crate's
ReadOnlyEdgeShard is not exposed). So a reader (`read_only=True`) of a store this user cannot write
(a read-only file system, another user's files) searches a private temporary copy of the collection,
when it is at most READ_ONLY_COPY_MAX_BYTES and the temporary folder has room; writes to such a
backend are refused. Otherwise `open` says what to do.

Edge writes through shared memory maps of sparse files, and a page the disk cannot hold kills the
process with SIGBUS instead of returning an error. So every Edge call that can allocate (create, open,
upsert, delete, flush, close) is preceded by a free-space check sized to what that call can allocate
(`indexer.store.diskspace`), and a store keeps a small reserve file that an open, a flush or a close
releases when the disk is full: a full disk ends a write with StorageFaultError, and the store still
opens for reading. docs/operations.md has the measurements.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

from indexer.store import diskspace
from indexer.store.backend import (
    INT8_QUANTILE,
    RESCORE_OVERSAMPLING,
    WRITE_FACTOR,
    Match,
    NewPoint,
    PointRecord,
    PointsBackend,
    Prefetch,
    VectorSpace,
    Where,
    folder_bytes,
    free_bytes_at,
    storage_fault,
)
from schemas.errors import StorageFaultError, StoreBusyError

METADATA_FILE = "chunkless.json"
_DATATYPES = {
    "float32": qe.VectorStorageDatatype.Float32,
    "float16": qe.VectorStorageDatatype.Float16,
    "uint8": qe.VectorStorageDatatype.Uint8,
}
_DISTANCES = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot}
T = TypeVar("T")
READ_ONLY_COPY_MAX_BYTES = 1 << 30  # a reader copies a store it cannot write only up to this size
# Edge drops write-ahead log segments only when it flushes, and an ingest flushes once at its end: without
# this, a 100 MB document left a 1.9 GB WAL to be replayed after a crash. The WAL takes 3 to 5 bytes a
# vector number whatever the stored dtype (CBOR: 3 for a value float16 holds exactly, uint8 codes
# included; 5 for other float32 values), so about 4 is what is counted.
FLUSH_EVERY_BYTES = 64 << 20
WAL_BYTES_PER_NUMBER = 4
WARM_READ_BYTES = 8 << 20  # read size of `warm_scanned_copies`
CREATE_BYTES = 16 << 20  # a new shard's files as first written: 8.2 MiB measured on tmpfs
log = logging.getLogger(__name__)


# Vacuum on `compact`: any segment with a deleted point. Edge optimises only when asked, so these
# thresholds never cost a write; `chunkless delete` decides when to ask (COMPACT_AFTER_FRACTION).
# Indexing: any segment, however small (Qdrant's default waits for 10 MB of vectors), so that once an
# optimize has run every stored point is under the pooled HNSW and, where kept, MaxSim's int8 copy.
VACUUM = qe.EdgeOptimizersConfig(deleted_threshold=0.0, vacuum_min_vector_number=1, indexing_threshold=1)


def edge_config(spaces: dict[str, VectorSpace]) -> qe.EdgeConfig:
    """The shard configuration of a collection with these vector spaces (the same at create and at reload).

    Args:
        spaces: named vectors and their configuration.

    Returns:
        The Edge config, with the VACUUM optimizer thresholds.
    """
    vectors = {}
    for name, sp in spaces.items():
        vectors[name] = qe.EdgeVectorParams(
            size=sp.size,
            distance=_DISTANCES[sp.distance],
            datatype=_DATATYPES[sp.datatype],
            multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim) if sp.multivector else None,
            # m=0: token matrices are scanned, never searched by graph; an HNSW over every token is the
            # single largest storage cost and buys nothing for our access pattern.
            hnsw_config=None if sp.hnsw else qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
            # Cold: mapped, read as searches touch it. Edge's default (Cached) reads every vector file whole
            # at open: on tmpfs that allocates each sparse 32 MiB chunk (an open of a 4 MiB store took
            # 131 MiB), and on a full tmpfs it was the SIGBUS of issue 21. Same scores; opens are faster.
            memory=qe.Memory.Cold,
            quantization_config=qe.ScalarQuantizationConfig(
                qe.ScalarType.Int8, quantile=INT8_QUANTILE, memory=qe.Memory.Cold
            )
            if sp.quantized
            else None,
        )
    return qe.EdgeConfig(vectors=vectors, optimizers=VACUUM)


def _search_params(quantized: bool, final: bool = True) -> qe.SearchParams | None:
    """How a stage searches a space with an int8 copy: a final stage rescores `RESCORE_OVERSAMPLING` x its
    limit from the stored rows; a first stage only picks candidates, which the final stage scores."""
    if not quantized:
        return None
    if not final:
        return qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=False))
    return qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING))


def _payload_selector(payload: bool | list[str]) -> Any:
    """Edge's form of "the whole payload, none, or these keys"."""
    return qe.PayloadSelector.Include(payload) if isinstance(payload, list) else payload


def _numbers(v: np.ndarray) -> Any:
    """A vector (or a multivector's rows) as memoryviews, the cheapest sequence Edge reads.

    Edge 0.9 reads a vector number by number through the sequence protocol, holding the GIL (which
    stalls the model's thread during ingest): from a NumPy array each number comes as a NumPy scalar,
    from a memoryview as a plain float: a third of the CPU, the same stored values. (Typed Any:
    Edge's stubs say lists; building one costs more than it saves.)
    """
    a = np.ascontiguousarray(v)
    return [row.data for row in a] if a.ndim == 2 else a.data


def copy_sparse_tree(src: Path, dst: Path) -> None:
    """Copy a folder tree, keeping files' holes holes: Edge's files are mostly unallocated 32 MiB maps.

    shutil.copytree writes holes as zeros, which would turn a 10 MiB store into a 150 MiB copy.

    Args:
        src: an existing folder.
        dst: a folder that does not exist yet.
    """
    for folder, _dirs, files in os.walk(src):
        here = dst / Path(folder).relative_to(src)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            with open(Path(folder) / name, "rb") as fin, open(here / name, "wb") as fout:
                size = os.fstat(fin.fileno()).st_size
                fout.truncate(size)
                pos = 0
                while pos < size:
                    try:
                        start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
                    except OSError:  # ENXIO: only a hole is left
                        break
                    end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
                    fin.seek(start)
                    fout.seek(start)
                    while start < end:
                        chunk = fin.read(min(end - start, 1 << 20))
                        if not chunk:
                            break
                        fout.write(chunk)
                        start += len(chunk)
                    pos = end


def warm_scanned_copies(shard: Path, names: set[str]) -> threading.Thread | None:
    """Read the int8 copies of `names` once, in the background, so the first query finds them cached.

    Every ranking query scans a quantized space's int8 copy whole, and Edge drops a shard's files from
    the OS page cache when it closes one, so a new process read it page by page, at random, in its
    first query: pdf-manuals-dev's 63 MB copy made a fresh process's first search 1.5 s against 0.4 s
    with the file read ahead, which takes 45 ms in order (docs/speed.md). A background thread: an open
    waits for nothing, and a query that comes first reads what it needs itself.

    Args:
        shard: the shard folder Edge loaded.
        names: the quantized named vectors.

    Returns:
        The reading thread, or None when there is nothing to read.
    """
    files = [f for n in sorted(names) for f in shard.glob(f"segments/*/vector_storage-{n}/quantized.data")]
    if not files:
        return None

    def read() -> None:
        for f in files:
            try:
                with open(f, "rb", buffering=0) as fh:
                    while fh.read(WARM_READ_BYTES):
                        pass
            except OSError:  # an optimize replaced the segment: its successor is read by the first query
                continue

    t = threading.Thread(target=read, name="chunkless-warm", daemon=True)
    t.start()
    return t


class EdgeBackend(PointsBackend):
    """One Edge shard in `<folder>/shard`, with the collection's metadata in `<folder>/chunkless.json`.

    Args:
        folder: the collection's folder (store path / collection name).
        read_only: the caller only needs to read: a store this user cannot write then opens through a
            private temporary copy (see the module docstring) whose writes raise StorageFaultError. A
            writable store opens as usual either way.
    """

    def __init__(self, folder: Path, read_only: bool = False) -> None:
        super().__init__(str(folder))
        self.folder = folder
        self.read_only = read_only
        self._shard: qe.EdgeShard | None = None
        self._copy: Path | None = None  # the temporary copy a read-only open searches, removed on close
        self._copy_why = ""  # why the store was copied (not writable, full disk), for messages
        self._lock = threading.Lock()  # Edge calls are serialised: the shard object is shared across threads
        self._spaces: dict[str, VectorSpace] = {}  # the collection's vector spaces, known after create/open
        self._unflushed = 0  # WAL bytes of the vectors upserted since the last flush, about
        self._unflushed_points = 0
        self._reserve = diskspace.Reserve(folder)
        self._tmpfs: bool | None = None  # whether an open allocates the holes it reads (known at create/open)
        self._holes = 0  # diskspace.populate_holes of the shard, when on tmpfs
        self._since_holes = 0  # bytes written since `_holes` was counted

    # -- lifecycle ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.folder / METADATA_FILE).is_file() and (self.folder / "shard").is_dir()

    def create(self, spaces: dict[str, VectorSpace], metadata: dict[str, Any], keyword_fields: list[str]) -> None:
        config = edge_config(spaces)
        self._room(CREATE_BYTES, "creating the collection")

        def make() -> qe.EdgeShard:
            self.folder.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(self.folder / "shard"), config)
            for f in keyword_fields:
                shard.update(qe.UpdateOperation.create_field_index(f, qe.PayloadSchemaType.Keyword))
            shard.flush()
            # metadata last and atomically: a folder without it is an unfinished create, never a collection
            tmp = self.folder / (METADATA_FILE + ".tmp")
            tmp.write_text(json.dumps(metadata, indent=2))
            os.replace(tmp, self.folder / METADATA_FILE)
            return shard

        self._shard = self._guard(make, "creating the collection")
        self.remember_spaces(metadata)
        self._spaces = dict(spaces)
        self._count_holes()
        self._reserve.hold(free_bytes_at(self.folder))

    def open(self) -> dict[str, Any]:
        meta: dict[str, Any] = self._guard(
            lambda: json.loads((self.folder / METADATA_FILE).read_text()), "reading the collection metadata"
        )
        self.remember_spaces(meta)
        self._spaces = {n: VectorSpace(**sp) for n, sp in meta.get("spaces", {}).items()}
        if self._shard is None:
            self._load()
        return meta

    def _load(self) -> None:
        path = self.folder / "shard"
        if not all(os.access(p, os.W_OK) for p in self.folder.rglob("*")) or not os.access(path, os.W_OK):
            if not self.read_only:
                raise StorageFaultError(
                    f"store {self.folder} is not writable by this user, and the embedded store (Qdrant Edge) "
                    "cannot write to it: give this user write access, or copy the store to a writable folder "
                    "and pass that as --store"
                )
            path = self._copy_for_reading(
                "is not writable by this user",
                "give this user write access, or copy the store to a writable folder and pass that as --store",
            )
        else:
            short = self._shortfall(diskspace.OPEN_BYTES + self._count_holes(path, fill=False), "opening the store")
            if short is not None and not self.read_only:
                raise self._full("opening the store", short)
            if short is not None:  # a reader still gets its answers, from a copy where there is room
                path = self._copy_for_reading(
                    f"is on a full disk ({short})",
                    "free space on that disk, or copy the store to a larger one and pass that as --store",
                )
        try:
            self._shard = qe.EdgeShard.load(str(path))
        except Exception as e:  # Edge raises a bare Exception; its WAL lock says WouldBlock
            if "WouldBlock" in str(e):
                raise StoreBusyError(
                    f"store {self.folder} is open in another process (an ingest or a search); Edge allows one "
                    "process per store: wait for it to finish, or serve several processes from a Qdrant server "
                    "(CHUNKLESS_URL)"
                ) from e
            fault = storage_fault(e, str(self.folder), "opening the store")
            if fault is not None:
                raise fault from e
            raise
        if self._copy is None:
            self._count_holes()  # what this open read whole is allocated now
            self._reserve.hold(free_bytes_at(self.folder))
        warm_scanned_copies(path, self.quantized)

    def _copy_for_reading(self, why: str, todo: str) -> Path:
        """Copy the collection into a private temporary folder and return its shard path.

        Args:
            why: what keeps the store from opening in place ("is not writable by this user"), for messages.
            todo: what the user can do instead, for messages.
        """
        size = folder_bytes(self.folder)
        tmp_root = Path(tempfile.gettempdir())
        cannot = f"store {self.folder} {why}, and Qdrant Edge cannot open a store without writing to it"
        if size > READ_ONLY_COPY_MAX_BYTES:
            raise StorageFaultError(
                f"{cannot}; at {size / 2**20:.0f} MiB it is too large to search through a temporary copy "
                f"(at most {READ_ONLY_COPY_MAX_BYTES >> 20} MiB): {todo}"
            )
        if free_bytes_at(tmp_root) < 2 * size + (64 << 20):
            raise StorageFaultError(
                f"{cannot}; {tmp_root} has too little room for a temporary copy ({size / 2**20:.0f} MiB): {todo}"
            )
        self._copy = Path(tempfile.mkdtemp(prefix="chunkless-readonly-"))
        try:
            copy_sparse_tree(self.folder / "shard", self._copy / "shard")
        except OSError as e:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None
            raise StorageFaultError(f"{cannot}, and it could not be copied to read it: {e}: {todo}") from e
        self._copy_why = why
        log.warning("store %s %s: searching a temporary copy (%.0f MiB)", self.folder, why, size / 2**20)
        return self._copy / "shard"

    def _refuse_read_only(self, doing: str) -> None:
        if self._copy is not None:  # writes to the copy would be lost on close
            raise StorageFaultError(
                f"{doing} in {self.folder} refused: the store {self._copy_why}, so it is open for reading "
                "through a temporary copy; it can be changed once that is no longer so"
            )

    @property
    def shard(self) -> qe.EdgeShard:
        """The open shard (loads it when `open` was not called, e.g. right after `exists`)."""
        if self._shard is None:
            self.open()
        assert self._shard is not None
        return self._shard

    def _guard(self, fn: Callable[[], T], doing: str) -> T:
        """Run a write-side call; disk-full, read-only and permission faults become StorageFaultError."""
        try:
            return fn()
        except Exception as e:
            fault = storage_fault(e, str(self.folder), doing)
            if fault is not None:
                raise fault from e
            raise

    # -- disk space (see indexer.store.diskspace) -------------------------------------------------------
    def _count_holes(self, shard: Path | None = None, fill: bool = True) -> int:
        """The holes an open of the shard would allocate (tmpfs only; 0 elsewhere), filled first when `fill`.

        Filling them while there is room (the next open would allocate them anyway) is what lets a store
        on a tmpfs filled by someone else still open: then it needs only OPEN_BYTES, which the reserve holds.
        """
        if self._tmpfs is None:
            self._tmpfs = diskspace.allocates_on_read(self.folder)
        shard = shard or self.folder / "shard"
        if not self._tmpfs:
            self._holes = 0
        elif fill and free_bytes_at(self.folder) - diskspace.populate_holes(shard) >= diskspace.WRITE_MARGIN:
            self._holes = diskspace.fill_populated_holes(shard)
        else:
            self._holes = diskspace.populate_holes(shard)
        self._since_holes = 0
        return self._holes

    def headroom(self) -> int:
        """WRITE_MARGIN, plus on tmpfs the holes the next open of the store will allocate."""
        if self._tmpfs and self._since_holes >= diskspace.WRITE_MARGIN // 4:  # new files appear as data grows
            self._count_holes()
        return diskspace.WRITE_MARGIN + self._holes

    def _room(self, nbytes: int, doing: str, keep: int | None = None) -> None:
        """Refuse an Edge call that may allocate `nbytes` unless the disk keeps `keep` bytes free after it.

        Edge maps its files and a page the disk cannot hold is SIGBUS, not an error: this check, before
        the call, is where a full disk becomes a StorageFaultError.

        Args:
            nbytes: the most the call allocates.
            doing: what the call does, for the message.
            keep: bytes to leave free (default `headroom()`: what a write of data leaves).
        """
        free = free_bytes_at(self.folder)
        need = nbytes + (self.headroom() if keep is None else keep)
        if free < need:
            raise StorageFaultError(
                f"{doing} in {self.folder} refused before the disk filled: it needs about {need / 2**20:.1f} MiB "
                f"free ({nbytes / 2**20:.1f} MiB for this write and its write-ahead log, plus "
                f"{(need - nbytes) / 2**20:.1f} MiB kept free to close and reopen the store) but the disk has "
                f"{free / 2**20:.1f} MiB free; free space or use --store on a larger disk, then run the command "
                "again. Documents stored before are intact"
            )
        self._since_holes += nbytes

    def _shortfall(self, need: int, doing: str) -> str | None:
        """None when the disk has `need` bytes free, releasing the store's reserve if that is what it takes;
        otherwise what is missing, for a message."""
        free = free_bytes_at(self.folder)
        if free >= need:
            return None
        held = self._reserve.held()
        if free + held < need:
            return f"it needs about {need / 2**20:.1f} MiB free but the disk has {free / 2**20:.1f} MiB free"
        self._reserve.release()
        log.warning(
            "the disk holding %s is full (%.1f MiB free): released the store's %.0f MiB reserve for %s",
            self.folder,
            free / 2**20,
            held / 2**20,
            doing,
        )
        return None

    def _full(self, doing: str, short: str) -> StorageFaultError:
        return StorageFaultError(
            f"{doing} in {self.folder} refused: {short}; free space or use --store on a larger disk, then run "
            "the command again. Documents stored before are intact"
        )

    def _make_room(self, need: int, doing: str) -> None:
        """Make sure an open, flush or close has `need` bytes: release the store's reserve if the disk has not."""
        short = self._shortfall(need, doing)
        if short is not None:
            raise self._full(doing, short)

    def _flush_bytes(self) -> int:
        return diskspace.FLUSH_BYTES + diskspace.FLUSH_BYTES_PER_POINT * self._unflushed_points

    def _flush(self, shard: qe.EdgeShard) -> None:
        """Flush with room for it (the reserve released if the disk is full); the caller holds the lock."""
        self._make_room(self._flush_bytes(), "flushing writes")
        self._guard(shard.flush, "flushing writes")
        self._unflushed = 0
        self._unflushed_points = 0

    def free_bytes(self) -> int | None:
        return free_bytes_at(self.folder)

    def flush(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._flush(self._shard)

    def compact(self) -> None:
        """Run Edge's optimizers now, so that every segment holding deleted points is rewritten without them.

        Edge runs no optimizer in the background: deleted points keep their bytes until this runs.
        Qdrant's vacuum defaults skip segments under 1,000 points or 20% deleted, which would leave
        most of a chunkless store as it is (a segment point holds thousands of token rows), so the
        shard is reloaded with VACUUM (any deleted point, any segment size) first; a store created
        before this setting existed gets it written into its config then. The rewrite copies the live
        points of each segment it optimises, so it needs free space for them.
        """
        self._refuse_read_only("compacting the store")
        self.shard  # noqa: B018 - attached (and its spaces known) before the reload below
        # the rewrite copies at most the store's current bytes, and makes new segments' files beside them
        # (ensure_space multiplies by WRITE_FACTOR)
        need = (self.disk_bytes() or 0) + diskspace.OPTIMIZE_BYTES
        self.ensure_space(int(need / WRITE_FACTOR), "compacting the store")
        with self._lock:
            shard = self.shard
            if self._spaces:  # reload with the vacuum settings; they persist in the shard's config
                self._guard(shard.flush, "compacting the store")
                self._shard = None
                shard.close()
                shard = self._guard(
                    lambda: qe.EdgeShard.load(str(self.folder / "shard"), edge_config(self._spaces)),
                    "compacting the store",
                )
                self._shard = shard
            self._guard(shard.optimize, "compacting the store")
            self._guard(shard.flush, "compacting the store")

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                shard, self._shard = self._shard, None
                try:
                    if self._copy is None:
                        self._flush(shard)
                finally:
                    shard.close()
            if self._copy is not None:
                shutil.rmtree(self._copy, ignore_errors=True)
                self._copy = None

    # -- writes ------------------------------------------------------------------------------------
    def upsert(self, points: list[NewPoint]) -> None:
        doing = "writing points"
        self._refuse_read_only(doing)
        pts = [qe.Point(p.id, {n: _numbers(v) for n, v in p.vectors.items()}, p.payload) for p in points]
        nbytes = diskspace.upsert_bytes(points, self.datatypes)
        with self._lock:
            shard = self.shard
            self._room(nbytes, doing)
            self._guard(lambda: shard.update(qe.UpdateOperation.upsert_points(pts)), doing)
            self._unflushed += WAL_BYTES_PER_NUMBER * sum(
                np.asarray(v).size for p in points for v in p.vectors.values()
            )
            self._unflushed_points += len(points)
            if self._unflushed >= FLUSH_EVERY_BYTES:  # lets Edge drop the WAL written so far
                self._flush(shard)

    def delete(self, where: Where) -> None:
        self._refuse_read_only("deleting points")
        flt = self.translate(where)
        with self._lock:
            shard = self.shard
            # a delete stores nothing: it may use the margin a write of data keeps, all but what the flush,
            # close and reopen need (refusing it would fail the end of a commit, or a delete meant to make room)
            keep = diskspace.OPEN_BYTES + self._flush_bytes() + self._holes
            self._room(diskspace.DELETE_BYTES, "deleting points", keep)
            self._guard(lambda: shard.update(qe.UpdateOperation.delete_points_by_filter(flt)), "deleting points")

    # -- reads -------------------------------------------------------------------------------------
    def scroll_one_page(
        self, flt: Any, offset: Any, limit: int, with_vectors: list[str], payload: bool | list[str]
    ) -> tuple[list[PointRecord], Any]:
        selector = _payload_selector(payload)
        req = qe.ScrollRequest(
            offset=offset, limit=limit, filter=flt, with_payload=selector, with_vector=with_vectors or False
        )
        with self._lock:
            recs, offset = self.shard.scroll(req)
        out = self.records(recs, with_vectors)
        return out, offset

    def retrieve(self, ids: list[str], with_vectors: list[str], payload: bool | list[str]) -> list[PointRecord]:
        if not ids:
            return []
        selector = _payload_selector(payload)
        with self._lock:
            recs = self.shard.retrieve(ids, with_payload=selector, with_vector=with_vectors or False)  # type: ignore[arg-type]
        return self.records(recs, with_vectors)

    def query(
        self,
        using: str,
        vector: np.ndarray,
        limit: int,
        where: Where | None,
        with_payload: bool | list[str],
        prefetch: Prefetch | None = None,
    ) -> list[PointRecord]:
        flt = self.translate(where) if where else None
        first = None
        if prefetch is not None:
            near = qe.Query.Nearest(np.asarray(prefetch.vector, dtype=np.float32), using=prefetch.using)  # type: ignore[arg-type]
            params = _search_params(prefetch.using in self.quantized, final=False)
            first = [qe.Prefetch(limit=prefetch.limit, query=near, filter=flt, params=params)]
        req = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32), using=using),  # type: ignore[arg-type]
            prefetches=first,
            filter=flt,
            with_payload=_payload_selector(with_payload),
            with_vector=False,
            params=_search_params(using in self.quantized),
        )
        with self._lock:
            res = self.shard.query(req)
        return [PointRecord(str(r.id), dict(r.payload or {}), score=float(r.score)) for r in res]

    def count(self, where: Where) -> int:
        flt = self.translate(where)
        with self._lock:
            return int(self.shard.count(qe.CountRequest(exact=True, filter=flt)))

    def disk_bytes(self) -> int | None:
        return folder_bytes(self.folder) - self._reserve.held()  # the reserve is room kept, not data

    # -- filters -----------------------------------------------------------------------------------
    def match_condition(self, m: Match) -> Any:
        if isinstance(m.value, list):
            match: Any = qe.MatchExcept(m.value) if m.negate else qe.MatchAny(m.value)
        else:
            match = qe.MatchValue(m.value)
        return qe.FieldCondition(m.key, match=match)

    def make_filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> qe.Filter:
        return qe.Filter(must=must or None, should=should or None, must_not=must_not or None)
