"""The points API chunkless needs from Qdrant: one documented base class, and a backend-neutral filter.

`PointsBackend` is what differs between the embedded engine (Edge, `indexer.store.edge`) and a Qdrant
server (`indexer.store.server`). What both share lives here once: the recursion over `Where`/`Match`
filters (a backend translates one leaf condition and assembles one filter), the scroll paging loop (a
backend fetches one page), the conversion of returned vectors to NumPy, folder byte sums, the
free-space check and the mapping of operating-system faults to `StorageFaultError`. Everything
chunkless-specific (headers, versions, segments, orphans) lives once in `indexer.store.documents`.
"""

from __future__ import annotations

import errno
import functools
import re
import shutil
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import StorageFaultError

Scalar = str | int | bool

# bytes a document's write needs per byte of stored data: Edge writes it to its write-ahead log first
# (3 to 5 bytes a vector number, 2.3x to 4x the stored bytes) and copies segments when it optimises.
# A first, early estimate: each Edge write is checked again against what it can allocate.
WRITE_FACTOR = 3.0

_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_FAULT_TEXT = re.compile(r"os error (\d+)|No space left|Read-only file system|Permission denied")
_TEXT_ERRNO = {"No space left": errno.ENOSPC, "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


# int8 MaxSim: codes span the middle 99% of values; the 2x best by int8 are rescored from the stored rows
# (pdf-manuals-dev: the same 8 best segments for 60 of 60 questions, docs/speed.md)
INT8_QUANTILE = 0.99
RESCORE_OVERSAMPLING = 2.0


@dataclass(frozen=True)
class Match:
    """payload[key] == value, or payload[key] in values when `value` is a list (not in them when `negate`)."""

    key: str
    value: Scalar | list[str] | list[int]
    negate: bool = False


@dataclass(frozen=True)
class Where:
    """Backend-neutral filter: all of `must`, at least one of `should` (when any), none of `must_not`."""

    must: Sequence[Match | Where] = ()
    should: Sequence[Match | Where] = ()
    must_not: Sequence[Match | Where] = ()


@dataclass
class PointRecord:
    """A point as a backend returns it: vectors already as NumPy arrays."""

    id: str
    payload: dict[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    score: float = 0.0


@dataclass(frozen=True)
class VectorSpace:
    """One named vector of the collection."""

    size: int
    multivector: bool
    datatype: str  # float32 | float16 | uint8
    distance: str  # cosine | dot
    hnsw: bool
    # an int8 copy MaxSim scans first, rescoring its best exactly: collections made before it lack the key
    quantized: bool = False


@dataclass(frozen=True)
class Prefetch:
    """A first stage of a query: the `limit` points nearest `vector` in the named vector `using` (under the
    query's filter); the query then scores only those (Qdrant's multi-stage query, inside the engine)."""

    using: str
    vector: np.ndarray
    limit: int


@dataclass
class NewPoint:
    """A point to write: its id (a UUID string), named vectors and payload."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


def to_array(v: list, dtype: type) -> np.ndarray:
    """A returned vector as an array: a multivector (list of rows) packed row by row with `struct`.

    Qdrant returns vectors as Python lists of numbers, and a fetch converts hundreds of thousands of
    them: `struct` packs a row in one C loop, 3x faster than `np.fromiter` over the chained rows (which
    was itself faster than `asarray`'s shape discovery over nested lists; docs/speed.md).

    Args:
        v: a vector (list of numbers) or a multivector (list of equal-length rows).
        dtype: NumPy dtype of the result (float32, or uint8 for codes).

    Returns:
        (n,) or (rows, dim) array.
    """
    if not v or not isinstance(v[0], list):
        return np.asarray(v, dtype=dtype)
    dim = len(v[0])
    # one writable buffer, each row packed into its place (no joined bytes to copy again); codes (uint8
    # spaces) come back as Python floats too, so every row is packed as float32
    packer = _row_packer(dim)
    buf = bytearray(len(v) * packer.size)
    for i, row in enumerate(v):
        packer.pack_into(buf, i * packer.size, *row)
    rows = np.frombuffer(buf, dtype=np.float32).reshape(len(v), dim)
    return rows if dtype is np.float32 else rows.astype(dtype)


@functools.lru_cache(maxsize=16)
def _row_packer(dim: int) -> struct.Struct:
    """`struct`'s packer of one row of `dim` numbers as float32 bytes: one C loop per row."""
    return struct.Struct(f"={dim}f")


def folder_bytes(folder: Path) -> int:
    """Allocated bytes of every file under `folder`.

    Allocated blocks, not st_size: mmap files are preallocated sparse, and their logical size overstates.

    Args:
        folder: a directory (missing: 0 bytes).

    Returns:
        Bytes on disk.
    """
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def fault_errno(e: BaseException) -> int | None:
    """The storage-fault errno behind an exception (an OSError, or Edge's error text), or None.

    Args:
        e: any exception raised by a write or an open.

    Returns:
        ENOSPC, EDQUOT, EROFS, EACCES or EPERM when `e` is one of those faults; None otherwise.
    """
    if isinstance(e, OSError):
        return e.errno if e.errno in _FAULTS else None
    m = _FAULT_TEXT.search(str(e))
    if m is None:
        return None
    if m.group(1):
        code = int(m.group(1))
        return code if code in _FAULTS else None
    return _TEXT_ERRNO[m.group(0)]


def storage_fault(e: BaseException, path: str, doing: str) -> StorageFaultError | None:
    """A StorageFaultError naming `path` and what to do, when `e` is a disk-full/read-only/permission fault.

    Args:
        e: the exception a write or an open raised.
        path: the store folder or server URL the operation touched.
        doing: what was being done, e.g. "writing document 'a'".

    Returns:
        The error to raise (chain it from `e`), or None when `e` is not a storage fault.
    """
    code = fault_errno(e)
    if code is None:
        return None
    what = _FAULTS[code]
    if code in (errno.ENOSPC, errno.EDQUOT):
        todo = "free space on that disk (or use --store on a larger one) and run the command again"
    elif code == errno.EROFS:
        todo = "make the store writable, or copy it to a writable folder and pass that as --store"
    else:
        todo = "give this user write access to the store folder (or run as its owner), or pass another --store"
    return StorageFaultError(f"{doing} in {path} failed: {what}; {todo}. Documents stored before are intact")


class PointsBackend(ABC):
    """Points, vectors and payloads in one collection: what chunkless needs from a Qdrant engine.

    Lifecycle: `exists()`; then `create(...)` for a new collection or `open()` for an existing one;
    reads and writes; `flush()`; `close()`. Every write is durable when it returns (a Qdrant server:
    `wait=True`; Edge: applied to its WAL), because the store's crash safety writes segments before the
    header that names them.

    A subclass implements the abstract methods; the filter recursion (`translate`), the scroll paging
    loop (`scroll`), vector conversion (`vectors_of`) and the free-space check (`ensure_space`) are
    shared here.

    Attributes:
        location: what messages name (the store folder or the server URL).
        datatypes: stored datatype per named vector ("float32", "float16", "uint8"), known after
            `create` or `open`.
        quantized: the named vectors kept with an int8 copy (`VectorSpace.quantized`): a query's final
            stage over one rescores from the stored vectors, a first stage only picks candidates.
    """

    scroll_page: int = 256  # points per scroll request without vectors
    scroll_page_vectors: int = 256  # with vectors: token matrices are large

    def __init__(self, location: str) -> None:
        self.location = location
        self.datatypes: dict[str, str] = {}
        self.quantized: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------------
    @abstractmethod
    def exists(self) -> bool:
        """Whether the collection exists with chunkless metadata.

        Returns:
            True when `open()` can attach to it.

        Raises:
            ServerError: a server cannot be reached or refused the key.
        """

    @abstractmethod
    def create(self, spaces: dict[str, VectorSpace], metadata: dict[str, Any], keyword_fields: list[str]) -> None:
        """Create the collection and attach to it.

        Args:
            spaces: named vectors and their configuration.
            metadata: JSON-able collection metadata, returned by `open()` later.
            keyword_fields: payload fields to index as keywords (filters use them).

        Raises:
            StorageFaultError: disk full, read-only or permission denied.
            ServerError: the server refused the collection.
            StoreBusyError: another process holds the embedded store.
        """

    @abstractmethod
    def open(self) -> dict[str, Any]:
        """Attach to the existing collection now (not on first use) and read its metadata.

        Returns:
            The metadata given to `create`.

        Raises:
            StoreBusyError: another process holds the embedded store.
            StorageFaultError: the store cannot be opened (read-only, full disk, permissions).
            ServerError: the server cannot be reached, refused the key or runs an incompatible version.
        """

    @abstractmethod
    def flush(self) -> None:
        """Persist pending writes.

        Raises:
            StorageFaultError: disk full, read-only or permission denied.
        """

    @abstractmethod
    def compact(self) -> None:
        """Reclaim the disk space of deleted points.

        Qdrant marks deleted points and keeps their bytes until an optimizer rewrites the segment
        (its vacuum optimizer). A backend runs that rewrite where it can, or asks for it where it
        cannot wait for it; what each backend does is documented on its implementation.

        Raises:
            StorageFaultError: disk full, read-only or permission denied (rewriting needs room for a
                copy of the live points).
            ServerError: the server cannot be reached or refused the key.
        """

    @abstractmethod
    def close(self) -> None:
        """Flush and release the collection (the embedded store's lock); the backend is unusable after."""

    # -- writes ------------------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, points: list[NewPoint]) -> None:
        """Insert or replace points by id.

        Args:
            points: the points; vectors as NumPy arrays in the space's stored form.

        Raises:
            StorageFaultError: disk full, read-only or permission denied.
        """

    @abstractmethod
    def delete(self, where: Where) -> None:
        """Delete every point matching `where`.

        Args:
            where: the filter.

        Raises:
            StorageFaultError: disk full, read-only or permission denied.
        """

    @abstractmethod
    def free_bytes(self) -> int | None:
        """Free bytes where the collection's files live.

        Returns:
            Bytes free on the store's disk, or None when unknown (a server keeps its own disk).
        """

    def headroom(self) -> int:
        """Free bytes a write must leave on the disk after it: what closing and reopening the store need.

        Returns:
            Bytes (0 here: a backend without a local disk needs none).
        """
        return 0

    def ensure_space(self, expected_bytes: int, doing: str) -> None:
        """Refuse a write early, with the numbers, when the disk cannot hold it.

        An early check, before anything is written: it asks for `expected_bytes` x WRITE_FACTOR +
        `headroom()` free. The embedded store checks each of its writes again (an mmap write on a full
        disk ends the process with SIGBUS, so a full disk must be seen before the write).

        Args:
            expected_bytes: bytes the write stores (vectors and payload text).
            doing: what is about to be done, for the message.

        Raises:
            StorageFaultError: not enough free space; names the folder, the bytes needed and free.
        """
        free = self.free_bytes()
        if free is None:
            return
        headroom = self.headroom()
        need = int(expected_bytes * WRITE_FACTOR) + headroom
        if free < need:
            raise StorageFaultError(
                f"{doing} in {self.location} refused: it needs about {need / 2**20:.1f} MiB free "
                f"({expected_bytes / 2**20:.1f} MiB of data, x{WRITE_FACTOR:g} for the write-ahead log, plus "
                f"{headroom / 2**20:.1f} MiB kept free to close and reopen the store) but the disk has "
                f"{free / 2**20:.1f} MiB free; free space or use --store on a larger disk. Documents stored "
                "before are intact"
            )

    # -- reads -------------------------------------------------------------------------------------
    def scroll(
        self, where: Where, with_vectors: list[str], limit: int | None = None, payload: bool | list[str] = True
    ) -> list[PointRecord]:
        """Every point matching `where` (at most `limit`), page by page.

        Args:
            where: the filter.
            with_vectors: named vectors to return (empty: none).
            limit: most points to return (None: all).
            payload: True (whole payload), False, or the payload keys to return.

        Returns:
            The points, in the backend's id order.
        """
        out: list[PointRecord] = []
        offset: Any = None
        page = self.scroll_page_vectors if with_vectors else self.scroll_page
        if limit is not None:
            page = max(1, min(limit, page))
        flt = self.translate(where)
        while True:
            recs, offset = self.scroll_one_page(flt, offset, page, with_vectors, payload)
            out += recs
            if offset is None or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    @abstractmethod
    def scroll_one_page(
        self, flt: Any, offset: Any, limit: int, with_vectors: list[str], payload: bool | list[str]
    ) -> tuple[list[PointRecord], Any]:
        """One page of a scroll.

        Args:
            flt: the backend's filter (from `translate`).
            offset: where the page starts (None: the first page).
            limit: points per page.
            with_vectors: named vectors to return, converted with `vectors_of`.
            payload: True, False, or payload keys.

        Returns:
            (points, offset of the next page or None when this was the last).
        """

    @abstractmethod
    def retrieve(self, ids: list[str], with_vectors: list[str], payload: bool | list[str]) -> list[PointRecord]:
        """The points with these ids (those that exist), by id: no filter is evaluated.

        Reading known points by id costs a lookup each, where a filter on unindexed payload fields
        (a segment's index) reads every point of the document: 0.5 ms against 47 ms for 8 of the
        1,179 segments of a 300k-token manual (docs/speed.md).

        Args:
            ids: point ids (UUID strings).
            with_vectors: named vectors to return, converted with `vectors_of`.
            payload: True, False, or payload keys.

        Returns:
            The points found, in no particular order.
        """

    @abstractmethod
    def query(
        self,
        using: str,
        vector: np.ndarray,
        limit: int,
        where: Where | None,
        with_payload: bool | list[str],
        prefetch: Prefetch | None = None,
    ) -> list[PointRecord]:
        """Nearest points to `vector` in the named vector `using`, best first.

        Args:
            using: the named vector ("pooled": cosine; "tokens": MaxSim of a (m, dim) query matrix).
            vector: (dim,) or (m, dim) float32 query.
            limit: most points to return.
            where: the filter, or None (applied to the prefetch too).
            with_payload: True, False, or payload keys.
            prefetch: score only the points this first stage returns (None: every point the filter passes).

        Returns:
            Points with their `score`, best first.
        """

    @abstractmethod
    def count(self, where: Where) -> int:
        """Exact number of points matching `where`.

        Args:
            where: the filter.

        Returns:
            The count.
        """

    @abstractmethod
    def disk_bytes(self) -> int | None:
        """Bytes the collection allocates on disk.

        Returns:
            Allocated bytes, or None where the backend cannot tell (a remote server).
        """

    # -- filter translation ------------------------------------------------------------------------
    def translate(self, where: Where) -> Any:
        """`where` as the backend's filter object: recursion here, leaves and assembly in the subclass.

        Args:
            where: the backend-neutral filter.

        Returns:
            What `make_filter` builds.
        """

        def cond(c: Match | Where) -> Any:
            return self.translate(c) if isinstance(c, Where) else self.match_condition(c)

        return self.make_filter(
            [cond(c) for c in where.must], [cond(c) for c in where.should], [cond(c) for c in where.must_not]
        )

    @abstractmethod
    def match_condition(self, m: Match) -> Any:
        """One leaf condition in the backend's terms.

        Args:
            m: payload[key] == value, in values, or not in values (`negate` with a list).

        Returns:
            The backend's field condition.
        """

    @abstractmethod
    def make_filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> Any:
        """One filter from translated conditions (an empty list: no such clause).

        Args:
            must: conditions that must all hold.
            should: conditions of which at least one must hold (when any).
            must_not: conditions none of which may hold.

        Returns:
            The backend's filter.
        """

    # -- vectors -----------------------------------------------------------------------------------
    def remember_spaces(self, metadata: dict[str, Any]) -> None:
        """Record the stored datatype of each named vector from collection metadata.

        Args:
            metadata: what `create` was given (its "spaces" entry).
        """
        self.datatypes = {n: sp["datatype"] for n, sp in metadata.get("spaces", {}).items()}
        self.quantized = {n for n, sp in metadata.get("spaces", {}).items() if sp.get("quantized")}

    def records(self, recs: Iterable[Any], with_vectors: list[str]) -> list[PointRecord]:
        """The backend's returned points (each with `id`, `payload` and `vector`) as `PointRecord`s.

        Args:
            recs: points from a scroll or a retrieve.
            with_vectors: the named vectors asked for, converted with `vectors_of`.

        Returns:
            The records, in the order given.
        """
        return [PointRecord(str(r.id), dict(r.payload or {}), self.vectors_of(r.vector, with_vectors)) for r in recs]

    def vectors_of(self, raw: Any, names: list[str]) -> dict[str, np.ndarray]:
        """Returned named vectors as arrays: float32 for float spaces, uint8 codes for uint8 spaces.

        Args:
            raw: the backend's vectors of one point (a dict by name), or None.
            names: the names to convert.

        Returns:
            name -> array, for the names present.
        """
        if not isinstance(raw, dict):
            return {}
        out_type = {"float32": np.float32, "float16": np.float32, "uint8": np.uint8}
        return {n: to_array(raw[n], out_type[self.datatypes.get(n, "float32")]) for n in names if n in raw}


def free_bytes_at(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent).

    Args:
        folder: a folder that may not exist yet.

    Returns:
        Bytes available to this user.
    """
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
