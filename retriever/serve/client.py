"""`RemoteRetriever`: a running `chunkless serve` behind `Retriever`'s search signatures and return types.

r = Retriever(Settings(store_path="chunkless_store"))   # in-process
r = RemoteRetriever("http://127.0.0.1:8000")           # the same calls, over HTTP
r = RemoteRetriever.for_store(settings.store)          # the process holding an embedded store (an ingest)
r.search("How does a steam engine work?").spans
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from indexer.holder import read_advert
from schemas.errors import ChunklessError, QueryError, ServerError
from schemas.models import SearchResponse, SpanResult

if TYPE_CHECKING:
    from schemas.settings import StoreSettings

DEFAULT_TIMEOUT_S = 300.0


class RemoteRetriever:
    """Client of a chunkless service; thread-safe (one pooled HTTP connection set).

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: the service's key (its CHUNKLESS_SERVICE_API_KEY), sent as a Bearer token.
        timeout: seconds per request.

    Raises (from every method):
        QueryError: the service refused the request as bad input (its message names the field).
        ServerError: the service cannot be reached, refused the key, or failed.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def for_store(cls, store: StoreSettings, timeout: float = DEFAULT_TIMEOUT_S) -> RemoteRetriever:
        """A client of the process that holds the embedded store `store` names and serves its reads.

        Edge admits one process per store: while `chunkless ingest` or `chunkless serve` holds it,
        `Retriever(settings)` raises StoreBusyError, and this asks the holder instead (search,
        search_batch, documents, stats), answered from the documents committed so far. `Retriever`
        itself never turns into a client: it promises an in-process engine (explain, the store, the
        fetch cache), which a holder's answers over HTTP are not.

        Raises:
            ServerError: no live process advertises reads of this store (none holds it, or the
                holder serves no reads): open it with `Retriever(settings)`.
        """
        where = store.collection_path
        advert = read_advert(where) if store.url is None else None
        if advert is None:
            raise ServerError(
                f"no process holding store {store.store_path} (collection '{store.collection}') serves its reads; "
                "open it with Retriever(settings)"
            )
        return cls(advert.url, advert.token, timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Retriever's API -------------------------------------------------------------------------------
    def search(
        self, query: str, top: int | None = None, filter: dict[str, str | list[str]] | None = None
    ) -> SearchResponse:
        """Best spans for `query`, as `Retriever.search` returns them (timings from the server)."""
        return _response(self._call("POST", "/v1/search", json=_body(query=query, top=top, filter=filter)))

    def search_batch(
        self, queries: Sequence[str], top: int | None = None, filter: dict[str, str | list[str]] | None = None
    ) -> list[SearchResponse]:
        """`search` for several queries in one request, as `Retriever.search_batch` returns them."""
        if not queries:
            return []
        body = _body(queries=list(queries), top=top, filter=filter)
        return [_response(r) for r in self._call("POST", "/v1/search/batch", json=body)]

    # --- the rest of the service -----------------------------------------------------------------------
    def upload(self, files: Sequence[tuple[Path, str]]) -> dict[str, Any]:
        """Queue an ingest job of local files, each under its doc id.

        Args:
            files: (local path, doc_id) per file.

        Returns:
            The job (``id``, ``state``...).
        """
        handles = [p.open("rb") for p, _ in files]
        try:
            parts = [("files", (Path(d).name, h)) for (_, d), h in zip(files, handles, strict=True)]
            data = {"doc_id": [d for _, d in files]}
            return dict(self._call("POST", "/v1/documents", files=parts, data=data))
        finally:
            for h in handles:
                h.close()

    def ingest_paths(self, paths: Sequence[str]) -> dict[str, Any]:
        """Queue an ingest job of files or folders on the server's disk (under its CHUNKLESS_INGEST_ROOTS)."""
        return dict(self._call("POST", "/v1/documents", files=[("path", (None, p)) for p in paths]))

    def job(self, job_id: str) -> dict[str, Any]:
        """State, per-file results and report of an ingest job."""
        return dict(self._call("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent ingest jobs first (kept beside the store: they outlive a restart)."""
        return list(self._call("GET", "/v1/jobs", params={"limit": limit})["jobs"])

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll a job until it leaves queued/running; ServerError after `timeout` seconds."""
        t0 = time.monotonic()
        while True:
            job = self.job(job_id)
            if job["state"] not in ("queued", "running"):
                return job
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise ServerError(f"job {job_id} at {self.url} still {job['state']} after {timeout:.0f}s")
            time.sleep(poll_s)

    def stats(self) -> dict[str, Any]:
        """What `chunkless stats --json` prints, from the service's store."""
        return dict(self._call("GET", "/v1/stats"))

    def delete(self, doc_id: str) -> bool:
        """Remove a document; False if the service has no such document."""
        try:
            self._call("DELETE", f"/v1/documents/{doc_id}")
        except RemoteQueryError as e:
            if e.status == 404:
                return False
            raise
        return True

    def documents(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of live documents."""
        return dict(self._call("GET", "/v1/documents", params={"offset": offset, "limit": limit}))

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise UnreachableError(
                f"chunkless service at {self.url} cannot be reached ({e}); start it with 'chunkless serve' "
                "or check --server/CHUNKLESS_SERVER"
            ) from e
        if r.status_code < 400:
            return r.json()
        try:
            detail = str(r.json().get("detail"))
        except ValueError:
            detail = r.text[:300]
        if r.status_code == 401:
            raise ServerError(
                f"chunkless service at {self.url} refused the API key: {detail}; set CHUNKLESS_SERVICE_API_KEY"
            )
        # the service's statuses come from schemas.errors' table: 4xx is the request's fault (bad input, a
        # missing document); 5xx (503 busy or shutting down, 507 storage fault) is the service's
        if r.status_code < 500:
            raise RemoteQueryError(r.status_code, detail)
        raise ServerError(f"chunkless service at {self.url} answered {r.status_code}: {detail}")


class UnreachableError(ServerError):
    """No answer from the service: nothing listens, the connection broke, or it timed out."""


class RemoteQueryError(QueryError):
    """A request the service refused as bad input; `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _response(d: Any) -> SearchResponse:
    try:
        return SearchResponse(
            query=d["query"],
            spans=[SpanResult(**s) for s in d["spans"]],
            timings_ms={k: float(v) for k, v in d.get("timings_ms", {}).items()},
            confidence=d.get("confidence"),
            abstained=bool(d.get("abstained", False)),
            threshold=d.get("threshold"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ChunklessError(f"the service answered a search in an unknown shape ({e}); upgrade the client") from e
