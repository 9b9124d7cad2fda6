"""PointsBackend over Qdrant Edge: the real Qdrant engine in-process, one shard per collection folder."""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from indexer.backends import Match, NewPoint, PointRecord, VectorSpace, Where
from schemas.errors import StoreBusyError

METADATA_FILE = "chunkless.json"
_DATATYPES = {
    "float32": qe.VectorStorageDatatype.Float32,
    "float16": qe.VectorStorageDatatype.Float16,
    "uint8": qe.VectorStorageDatatype.Uint8,
}
_DISTANCES = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot}
_NUMPY_OUT = {"float32": np.float32, "float16": np.float32, "uint8": np.uint8}


def _condition(c: Match | Where) -> Any:
    if isinstance(c, Where):
        return to_edge_filter(c)
    if isinstance(c.value, list):
        match: Any = qe.MatchExcept(c.value) if c.negate else qe.MatchAny(c.value)
    else:
        match = qe.MatchValue(c.value)
    return qe.FieldCondition(c.key, match=match)


def to_edge_filter(w: Where) -> qe.Filter:
    """Where -> qdrant_edge.Filter."""
    return qe.Filter(
        must=[_condition(c) for c in w.must] or None,
        should=[_condition(c) for c in w.should] or None,
        must_not=[_condition(c) for c in w.must_not] or None,
    )


def _to_array(v: list, dtype: type) -> np.ndarray:
    """Edge's Python lists -> array: a multivector (list of rows) through one flat fromiter.

    Edge 0.9 has no array output. Measured per 2000x384 matrix on a shared 2-core CPU: building the
    lists (Record.vector) ~62 ms, then np.asarray ~30 ms vs fromiter over the chained rows ~25 ms
    (2000x1024: ~80 vs ~72 ms): fromiter skips asarray's shape discovery over nested lists.
    """
    if not v or not isinstance(v[0], list):
        return np.asarray(v, dtype=dtype)
    dim = len(v[0])
    return np.fromiter(itertools.chain.from_iterable(v), dtype=dtype, count=len(v) * dim).reshape(len(v), dim)


class EdgeBackend:
    """One Edge shard in `<folder>/shard`, with the collection's metadata in `<folder>/chunkless.json`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._shard: qe.EdgeShard | None = None
        self._dtypes: dict[str, str] = {}
        self._lock = threading.Lock()  # Edge calls are serialised: the shard object is shared across threads

    # -- lifecycle ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.folder / METADATA_FILE).is_file() and (self.folder / "shard").is_dir()

    def create(self, spaces: dict[str, VectorSpace], metadata: dict[str, Any], keyword_fields: list[str]) -> None:
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
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(str(self.folder / "shard"), qe.EdgeConfig(vectors=vectors))
        for f in keyword_fields:
            shard.update(qe.UpdateOperation.create_field_index(f, qe.PayloadSchemaType.Keyword))
        shard.flush()
        # metadata last and atomically: a folder without it is an unfinished create, never a collection
        tmp = self.folder / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(metadata, indent=2))
        os.replace(tmp, self.folder / METADATA_FILE)
        self._shard = shard
        self._dtypes = {n: sp.datatype for n, sp in spaces.items()}

    def read_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.folder / METADATA_FILE).read_text())
        self._dtypes = {n: sp["datatype"] for n, sp in meta.get("spaces", {}).items()}
        return meta

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            self.read_metadata()
            try:
                self._shard = qe.EdgeShard.load(str(self.folder / "shard"))
            except Exception as e:  # Edge raises a bare Exception; its WAL lock says WouldBlock
                if "WouldBlock" not in str(e):
                    raise
                raise StoreBusyError(
                    f"store {self.folder} is open in another process (an ingest or a search); Edge allows one "
                    "process per store: wait for it to finish, or serve several processes from a Qdrant server "
                    "(CHUNKLESS_URL)"
                ) from e
        return self._shard

    def flush(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.flush()

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None

    # -- points ------------------------------------------------------------------------------------
    def upsert(self, points: list[NewPoint]) -> None:
        # Edge accepts NumPy arrays directly (its stubs say lists): no list round trip on the write path
        pts = [qe.Point(p.id, dict(p.vectors), p.payload) for p in points]  # type: ignore[arg-type]
        with self._lock:
            self.shard.update(qe.UpdateOperation.upsert_points(pts))

    def delete(self, where: Where) -> None:
        with self._lock:
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(to_edge_filter(where)))

    def _vectors(self, raw: Any, names: list[str]) -> dict[str, np.ndarray]:
        if not raw:
            return {}
        return {n: _to_array(raw[n], _NUMPY_OUT[self._dtypes.get(n, "float32")]) for n in names if n in raw}

    def scroll(
        self, where: Where, with_vectors: list[str], limit: int | None = None, payload: bool | list[str] = True
    ) -> list[PointRecord]:
        out: list[PointRecord] = []
        offset = None
        page = 256 if limit is None else max(1, min(limit, 256))
        flt = to_edge_filter(where)
        selector = qe.PayloadSelector.Include(payload) if isinstance(payload, list) else payload
        while True:
            with self._lock:
                recs, offset = self.shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=page, filter=flt, with_payload=selector, with_vector=with_vectors or False
                    )
                )
            out += [PointRecord(str(r.id), dict(r.payload or {}), self._vectors(r.vector, with_vectors)) for r in recs]
            if offset is None or (limit is not None and len(out) >= limit):
                return out

    def query(
        self, using: str, vector: np.ndarray, limit: int, where: Where | None, with_payload: bool | list[str]
    ) -> list[PointRecord]:
        req = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32), using=using),  # type: ignore[arg-type]
            filter=to_edge_filter(where) if where else None,
            with_payload=qe.PayloadSelector.Include(with_payload) if isinstance(with_payload, list) else with_payload,
            with_vector=False,
        )
        with self._lock:
            res = self.shard.query(req)
        return [PointRecord(str(r.id), dict(r.payload or {}), score=float(r.score)) for r in res]

    def count(self, where: Where) -> int:
        with self._lock:
            return int(self.shard.count(qe.CountRequest(exact=True, filter=to_edge_filter(where))))

    def disk_bytes(self) -> int | None:
        # allocated blocks, not st_size: mmap files are preallocated sparse, and their logical size overstates
        return sum(f.stat().st_blocks * 512 for f in self.folder.rglob("*") if f.is_file())
