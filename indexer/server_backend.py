"""PointsBackend over `qdrant-client`: a Qdrant server or cluster, or qdrant-client's local mode.

`Settings.url` picks the target:
- `http(s)://host:port` (or `host:port`): a Qdrant server or cluster; gRPC is used when
  `prefer_grpc` (token matrices travel ~5x smaller than as JSON), with `api_key` and `https` for TLS.
- `:memory:` or `local:/some/folder`: qdrant-client's local mode, the same API calls against an
  in-process Python store. It exists for tests and small trials: it ignores vector datatypes,
  payload indexes, sharding and on-disk settings, and it is slow on large collections.

Every write waits for the server to apply it (`wait=True`): the store's crash-safety relies on
segments being durable before the header that names them is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse
from qdrant_client.local.qdrant_local import QdrantLocal

from indexer.backends import Match, NewPoint, PointRecord, VectorSpace, Where
from schemas.errors import ChunklessError
from schemas.settings import Settings

META_KEY = "chunkless"
LOCAL_PREFIX = "local:"
_DATATYPES = {"float32": qm.Datatype.FLOAT32, "float16": qm.Datatype.FLOAT16, "uint8": qm.Datatype.UINT8}
_DISTANCES = {"cosine": qm.Distance.COSINE, "dot": qm.Distance.DOT}
_NUMPY_OUT = {"float32": np.float32, "float16": np.float32, "uint8": np.uint8}
_SCROLL_PAGE = 64  # token matrices are large: small pages keep each response well under the gRPC message limit


def _condition(c: Match | Where) -> qm.Condition:
    if isinstance(c, Where):
        return to_client_filter(c)
    match: Any
    if isinstance(c.value, list):
        match = qm.MatchExcept(**{"except": c.value}) if c.negate else qm.MatchAny(any=c.value)
    else:
        match = qm.MatchValue(value=c.value)
    return qm.FieldCondition(key=c.key, match=match)


def to_client_filter(w: Where) -> qm.Filter:
    """Where -> qdrant_client Filter."""
    return qm.Filter(
        must=[_condition(c) for c in w.must] or None,
        should=[_condition(c) for c in w.should] or None,
        must_not=[_condition(c) for c in w.must_not] or None,
    )


def make_client(settings: Settings) -> QdrantClient:
    """A QdrantClient for settings.url (server, `:memory:` or `local:FOLDER`)."""
    url = settings.store.url or ""
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith(LOCAL_PREFIX):
        return QdrantClient(path=url[len(LOCAL_PREFIX) :])
    return QdrantClient(
        url=url,
        api_key=settings.store.qdrant_api_key.get_secret_value() if settings.store.qdrant_api_key else None,
        prefer_grpc=settings.store.prefer_grpc,
        https=settings.store.https,
        timeout=120,  # a multi-segment document upsert on a loaded cluster can exceed the 5 s default
    )


class ServerBackend:
    """One collection on a Qdrant server (or qdrant-client local mode); metadata in the collection's `metadata`."""

    def __init__(self, settings: Settings, client: QdrantClient | None = None) -> None:
        self.settings = settings
        self.name = settings.store.collection
        self.client = client or make_client(settings)
        self._dtypes: dict[str, str] = {}
        # qdrant-client's local mode: no payload indexes, datatypes or sharding (same API calls otherwise)
        self.local = isinstance(getattr(self.client, "_client", None), QdrantLocal)

    # -- lifecycle ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        if not self.client.collection_exists(self.name):
            return False
        return META_KEY in (self.client.get_collection(self.name).config.metadata or {})

    def create(self, spaces: dict[str, VectorSpace], metadata: dict[str, Any], keyword_fields: list[str]) -> None:
        s = self.settings.store
        vectors = {
            name: qm.VectorParams(
                size=sp.size,
                distance=_DISTANCES[sp.distance],
                datatype=_DATATYPES[sp.datatype],
                multivector_config=qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)
                if sp.multivector
                else None,
                # m=0: token matrices are scanned, never graph-searched; an HNSW over every token costs
                # the most storage and buys nothing for our access pattern
                hnsw_config=None if sp.hnsw else qm.HnswConfigDiff(m=0),
                on_disk=s.on_disk,
            )
            for name, sp in spaces.items()
        }
        try:
            self.client.create_collection(
                self.name,
                vectors_config=vectors,
                shard_number=s.shard_number,
                replication_factor=s.replication_factor,
                on_disk_payload=s.on_disk,
                metadata=metadata,
            )
        except (UnexpectedResponse, ValueError) as e:
            # concurrent workers race to create the collection: the loser reads the winner's metadata
            if not self.client.collection_exists(self.name):
                raise ChunklessError(f"cannot create collection '{self.name}' on {s.url}: {e}") from e
        for f in [] if self.local else keyword_fields:  # local mode warns that payload indexes do nothing
            self.client.create_payload_index(self.name, f, qm.PayloadSchemaType.KEYWORD, wait=True)
        self._dtypes = {n: sp.datatype for n, sp in spaces.items()}

    def read_metadata(self) -> dict[str, Any]:
        meta = dict(self.client.get_collection(self.name).config.metadata or {})
        self._dtypes = {n: sp["datatype"] for n, sp in meta.get("spaces", {}).items()}
        return meta

    def flush(self) -> None:
        """Nothing to do: every write waited for the server to apply it."""

    def close(self) -> None:
        self.client.close()

    # -- points ------------------------------------------------------------------------------------
    def upsert(self, points: list[NewPoint]) -> None:
        # the REST and gRPC encoders take Python lists only, not NumPy arrays
        structs = [
            qm.PointStruct(id=p.id, vector={n: v.tolist() for n, v in p.vectors.items()}, payload=p.payload)
            for p in points
        ]
        self.client.upsert(self.name, points=structs, wait=True)

    def delete(self, where: Where) -> None:
        self.client.delete(self.name, points_selector=qm.FilterSelector(filter=to_client_filter(where)), wait=True)

    def _vectors(self, raw: Any, names: list[str]) -> dict[str, np.ndarray]:
        if not isinstance(raw, dict):
            return {}
        return {n: np.asarray(raw[n], dtype=_NUMPY_OUT[self._dtypes.get(n, "float32")]) for n in names if n in raw}

    def scroll(
        self, where: Where, with_vectors: list[str], limit: int | None = None, payload: bool | list[str] = True
    ) -> list[PointRecord]:
        out: list[PointRecord] = []
        offset: Any = None
        page = _SCROLL_PAGE if with_vectors else 1024
        if limit is not None:
            page = max(1, min(limit, page))
        flt = to_client_filter(where)
        while True:
            recs, offset = self.client.scroll(
                self.name,
                scroll_filter=flt,
                limit=page,
                offset=offset,
                with_payload=payload,
                with_vectors=with_vectors or False,
            )
            out += [PointRecord(str(r.id), dict(r.payload or {}), self._vectors(r.vector, with_vectors)) for r in recs]
            if offset is None or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    def query(
        self, using: str, vector: np.ndarray, limit: int, where: Where | None, with_payload: bool | list[str]
    ) -> list[PointRecord]:
        res = self.client.query_points(
            self.name,
            query=np.asarray(vector, dtype=np.float32).tolist(),
            using=using,
            limit=limit,
            query_filter=to_client_filter(where) if where else None,
            with_payload=with_payload,
            with_vectors=False,
        )
        return [PointRecord(str(r.id), dict(r.payload or {}), score=float(r.score)) for r in res.points]

    def count(self, where: Where) -> int:
        return int(self.client.count(self.name, count_filter=to_client_filter(where), exact=True).count)

    def disk_bytes(self) -> int | None:
        """Allocated bytes of a local-mode folder; None for a server, which does not report it."""
        url = self.settings.store.url or ""
        if not url.startswith(LOCAL_PREFIX):
            return None
        folder = Path(url[len(LOCAL_PREFIX) :])
        return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())
