"""PointsBackend over `qdrant-client`: a Qdrant server or cluster, or qdrant-client's local mode.

`StoreSettings.url` picks the target:
- `http(s)://host:port` (or `host:port`): a Qdrant server or cluster; gRPC is used when
  `prefer_grpc` (token matrices travel ~5x smaller than as JSON) on `grpc_port` (default: the URL's
  port + 1 when it names one, else 6334), with `qdrant_api_key` and `https` for TLS.
- `:memory:` or `local:/some/folder`: qdrant-client's local mode, the same API calls against an
  in-process Python store. It exists for tests and small trials: it ignores vector datatypes,
  payload indexes, sharding and on-disk settings, and it is slow on large collections.

Every write waits for the server to apply it (`wait=True`): the store's crash-safety relies on
segments being durable before the header that names them is written. Every call that fails to reach
the server, or that the server refuses for its key, raises `ServerError` naming the URL and what to do.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.common.version_check import is_compatible
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from indexer.store.backend import (
    INT8_QUANTILE,
    RESCORE_OVERSAMPLING,
    Match,
    NewPoint,
    PointRecord,
    PointsBackend,
    Prefetch,
    VectorSpace,
    Where,
    folder_bytes,
    storage_fault,
)
from schemas.errors import ServerError, StoreBusyError
from schemas.settings import StoreSettings

META_KEY = "chunkless"
LOCAL_PREFIX = "local:"
DEFAULT_GRPC_PORT = 6334
_DATATYPES = {"float32": qm.Datatype.FLOAT32, "float16": qm.Datatype.FLOAT16, "uint8": qm.Datatype.UINT8}
_DISTANCES = {"cosine": qm.Distance.COSINE, "dot": qm.Distance.DOT}
_UNREACHABLE = (grpc.RpcError, httpx.HTTPError, ResponseHandlingException, ConnectionError, TimeoutError)
T = TypeVar("T")


def is_local(url: str | None) -> bool:
    """Whether `url` names qdrant-client's local mode (`:memory:` or `local:FOLDER`) rather than a server."""
    return bool(url) and (url == ":memory:" or str(url).startswith(LOCAL_PREFIX))


def grpc_port_for(store: StoreSettings) -> int:
    """The gRPC port to use: `grpc_port` when set, else the URL's port + 1 when it names one, else 6334.

    Args:
        store: the store settings (a server `url`).

    Returns:
        The port.
    """
    if store.grpc_port is not None:
        return store.grpc_port
    url = store.url or ""
    port = urlsplit(url if "://" in url else f"//{url}").port
    return port + 1 if port is not None else DEFAULT_GRPC_PORT


def make_client(store: StoreSettings) -> QdrantClient:
    """A QdrantClient for `store.url` (server, `:memory:` or `local:FOLDER`).

    Args:
        store: the store settings.

    Returns:
        The client; a server is not contacted yet (the first call is `ServerBackend.exists`).

    Raises:
        StoreBusyError: a local-mode folder is held by another process.
    """
    url = store.url or ""
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith(LOCAL_PREFIX):
        folder = url[len(LOCAL_PREFIX) :]
        try:
            return QdrantClient(path=folder)
        except RuntimeError as e:  # qdrant-client's portalocker lock on the folder
            if "already accessed" not in str(e):
                raise
            raise StoreBusyError(
                f"local-mode store {folder} is open in another process; local mode allows one process per "
                "folder: wait for it to finish, or use a Qdrant server (CHUNKLESS_URL=http://...)"
            ) from e
    return QdrantClient(
        url=url,
        grpc_port=grpc_port_for(store),
        api_key=store.qdrant_api_key.get_secret_value() if store.qdrant_api_key else None,
        prefer_grpc=store.prefer_grpc,
        https=store.https,
        timeout=120,  # a multi-segment document upsert on a loaded cluster can exceed the 5 s default
        check_compatibility=False,  # checked at open, with a message that says what to do
    )


class ServerBackend(PointsBackend):
    """One collection on a Qdrant server (or qdrant-client local mode); metadata in the collection's `metadata`.

    Args:
        store: the store settings (`url`, `collection`, key, sharding).
        client: a client to use instead of one made from `store`.

    Attributes:
        local: True in qdrant-client's local mode (no payload indexes, datatypes or sharding).
    """

    scroll_page = 1024
    scroll_page_vectors = 64  # token matrices are large: small pages keep responses under the gRPC message limit

    def __init__(self, store: StoreSettings, client: QdrantClient | None = None) -> None:
        super().__init__(store.url or "")
        self.store = store
        self.name = store.collection
        self.local = is_local(store.url)
        self.client = client or make_client(store)
        self._version_checked = self.local

    def _where_grpc(self) -> str:
        if self.local or not self.store.prefer_grpc:
            return ""
        return f" (gRPC port {grpc_port_for(self.store)}, CHUNKLESS_GRPC_PORT)"

    def _call(self, fn: Callable[[], T], doing: str) -> T:
        """Run a client call; an unreachable server or a refused key becomes ServerError."""
        try:
            return fn()
        except UnexpectedResponse as e:
            if e.status_code in (401, 403):
                raise self._refused(doing) from e
            fault = storage_fault(Exception(e.content.decode("utf-8", "replace")), f"the server {self.location}", doing)
            if fault is not None:  # the server's disk is full or read-only: its own message names the errno
                raise fault from e
            raise
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise self._refused(doing) from e
            if code not in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            raise self._unreachable(doing, e) from e
        except _UNREACHABLE as e:
            raise self._unreachable(doing, e) from e

    def _refused(self, doing: str) -> ServerError:
        return ServerError(
            f"{doing}: the Qdrant server at {self.location} refused the API key; set CHUNKLESS_QDRANT_API_KEY "
            "to the server's key (QDRANT__SERVICE__API_KEY)"
        )

    def _unreachable(self, doing: str, e: BaseException) -> ServerError:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return ServerError(
            f"{doing}: cannot reach the Qdrant server at {self.location}{self._where_grpc()}: {reason[:200]}; "
            "start it (docker compose --profile single up -d) or fix CHUNKLESS_URL / CHUNKLESS_GRPC_PORT"
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the collection exists with chunkless metadata; the first call also checks the server version.

        Returns:
            True when `open()` can attach to it.

        Raises:
            ServerError: unreachable, refused the key, or an incompatible version.
        """
        self.check_version()

        def check() -> bool:
            if not self.client.collection_exists(self.name):
                return False
            return META_KEY in (self.client.get_collection(self.name).config.metadata or {})

        return self._call(check, f"opening collection '{self.name}'")

    def create(self, spaces: dict[str, VectorSpace], metadata: dict[str, Any], keyword_fields: list[str]) -> None:
        s = self.store
        self.check_version()
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
                # as Edge's (indexer.store.edge); the server builds it in its own optimizers
                quantization_config=qm.ScalarQuantization(
                    scalar=qm.ScalarQuantizationConfig(
                        type=qm.ScalarType.INT8, quantile=INT8_QUANTILE, always_ram=False
                    )
                )
                if sp.quantized
                else None,
            )
            for name, sp in spaces.items()
        }
        doing = f"creating collection '{self.name}'"
        try:
            self._call(
                lambda: self.client.create_collection(
                    self.name,
                    vectors_config=vectors,
                    shard_number=s.shard_number,
                    replication_factor=s.replication_factor,
                    on_disk_payload=s.on_disk,
                    metadata=metadata,
                ),
                doing,
            )
        except (UnexpectedResponse, ValueError) as e:
            # concurrent workers race to create the collection: the loser reads the winner's metadata
            if not self.client.collection_exists(self.name):
                raise ServerError(f"cannot create collection '{self.name}' on {s.url}: {e}") from e
        for f in [] if self.local else keyword_fields:  # local mode warns that payload indexes do nothing
            self._call(
                partial(self.client.create_payload_index, self.name, f, qm.PayloadSchemaType.KEYWORD, wait=True), doing
            )
        self.remember_spaces(metadata)

    def open(self) -> dict[str, Any]:
        self.check_version()
        meta = dict(
            self._call(
                lambda: self.client.get_collection(self.name), f"opening collection '{self.name}'"
            ).config.metadata
            or {}
        )
        self.remember_spaces(meta)
        return meta

    def check_version(self) -> None:
        """Refuse a server whose version this qdrant-client does not support (same major, minor within 1).

        Raises:
            ServerError: the versions are incompatible (names both and what to do), or the server is unreachable.
        """
        if self._version_checked:
            return
        server = self._call(self.client.info, "asking the server its version").version
        client = importlib.metadata.version("qdrant-client")
        if server and not is_compatible(client, server):
            raise ServerError(
                f"the Qdrant server at {self.location} runs version {server}, which qdrant-client {client} does "
                "not support (major versions must match, minor versions differ by at most 1); run a Qdrant "
                f"server {client.rsplit('.', 1)[0]}.x (docker-compose.yml pins one) or install a matching "
                "qdrant-client"
            )
        self._version_checked = True

    def flush(self) -> None:
        """Nothing to do: every write waited for the server to apply it."""

    def compact(self) -> None:
        """Ask the server to run its optimizers now; in qdrant-client's local mode, nothing (it has no optimizers).

        A Qdrant server vacuums on its own, in the background, every segment whose deleted fraction
        exceeds the collection's `deleted_threshold` (default 0.2) and that holds at least
        `vacuum_min_vector_number` vectors (default 1000). Updating the collection with an empty
        optimizer config makes the server wait for running optimizations and re-plan them now; the
        vacuum itself still runs in the background after this returns, and only within those
        thresholds (change them with `update_collection(optimizers_config=...)` for a stricter vacuum).
        The server does not report its disk use through the API, so the effect shows in its own
        storage folder, not in `disk_bytes()`.
        """
        if self.local:
            return
        self._call(
            lambda: self.client.update_collection(self.name, optimizers_config=qm.OptimizersConfigDiff()),
            f"compacting collection '{self.name}'",
        )

    def close(self) -> None:
        self.client.close()

    # -- writes ------------------------------------------------------------------------------------
    def upsert(self, points: list[NewPoint]) -> None:
        # the REST and gRPC encoders take Python lists only, not NumPy arrays
        structs = [
            qm.PointStruct(id=p.id, vector={n: v.tolist() for n, v in p.vectors.items()}, payload=p.payload)
            for p in points
        ]
        self._call(lambda: self.client.upsert(self.name, points=structs, wait=True), "writing points")

    def delete(self, where: Where) -> None:
        sel = qm.FilterSelector(filter=self.translate(where))
        self._call(lambda: self.client.delete(self.name, points_selector=sel, wait=True), "deleting points")

    def free_bytes(self) -> int | None:
        """None: a server keeps its own disk and reports a full one as an error."""
        return None

    # -- reads -------------------------------------------------------------------------------------
    def scroll_one_page(
        self, flt: Any, offset: Any, limit: int, with_vectors: list[str], payload: bool | list[str]
    ) -> tuple[list[PointRecord], Any]:
        recs, offset = self._call(
            lambda: self.client.scroll(
                self.name,
                scroll_filter=flt,
                limit=limit,
                offset=offset,
                with_payload=payload,
                with_vectors=with_vectors or False,
            ),
            "reading points",
        )
        out = self.records(recs, with_vectors)
        return out, offset

    def retrieve(self, ids: list[str], with_vectors: list[str], payload: bool | list[str]) -> list[PointRecord]:
        if not ids:
            return []
        recs = self._call(
            lambda: self.client.retrieve(self.name, ids, with_payload=payload, with_vectors=with_vectors or False),
            "reading points",
        )
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
            first = qm.Prefetch(
                query=np.asarray(prefetch.vector, dtype=np.float32).tolist(),
                using=prefetch.using,
                limit=prefetch.limit,
                filter=flt,
                params=self._search_params(prefetch.using, final=False),
            )
        res = self._call(
            lambda: self.client.query_points(
                self.name,
                query=np.asarray(vector, dtype=np.float32).tolist(),
                using=using,
                prefetch=first,
                limit=limit,
                query_filter=flt,
                with_payload=with_payload,
                with_vectors=False,
                search_params=self._search_params(using),
            ),
            "searching",
        )
        return [PointRecord(str(r.id), dict(r.payload or {}), score=float(r.score)) for r in res.points]

    def _search_params(self, using: str, final: bool = True) -> qm.SearchParams | None:
        """As Edge's (indexer.store.edge): a final stage rescores, a first stage only picks candidates."""
        if using not in self.quantized or self.local:  # local mode scans exactly, and warns about params
            return None
        rescore = qm.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)
        return qm.SearchParams(quantization=rescore if final else qm.QuantizationSearchParams(rescore=False))

    def count(self, where: Where) -> int:
        flt = self.translate(where)
        return int(self._call(lambda: self.client.count(self.name, count_filter=flt, exact=True), "counting").count)

    def disk_bytes(self) -> int | None:
        """Allocated bytes of a local-mode folder; None for a server, which does not report it."""
        url = self.store.url or ""
        if not url.startswith(LOCAL_PREFIX):
            return None
        return folder_bytes(Path(url[len(LOCAL_PREFIX) :]))

    # -- filters -----------------------------------------------------------------------------------
    def match_condition(self, m: Match) -> qm.Condition:
        match: Any
        if isinstance(m.value, list):
            match = qm.MatchExcept(**{"except": m.value}) if m.negate else qm.MatchAny(any=m.value)
        else:
            match = qm.MatchValue(value=m.value)
        return qm.FieldCondition(key=m.key, match=match)

    def make_filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> qm.Filter:
        return qm.Filter(must=must or None, should=should or None, must_not=must_not or None)
