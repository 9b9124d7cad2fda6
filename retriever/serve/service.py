"""The parts one service process owns: the store, the model, the `Retriever` and the ingest job queue.

`ReadService` is what the read routes need (search, the document list, stats, health and metrics);
`Service` adds the model it loads and the ingest job queue. A process that holds a store for another
reason (a `chunkless ingest`) serves reads through a `ReadService` over its own open store
(`retriever.serve.holder`).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from indexer.embedders import TokenEmbedder, load_embedder
from indexer.store import TokenStore, open_or_create_store
from retriever.search import Filter, Retriever
from retriever.serve.embedder import ScheduledRetriever, SerialEmbedder
from retriever.serve.jobs import JobQueue, job_log
from retriever.serve.metrics import Metrics
from schemas.models import SearchResponse
from schemas.settings import Settings

log = logging.getLogger(__name__)


class ReadsEndpoint(Protocol):
    """What `Service` needs of an endpoint answering other processes' reads (`retriever.serve.holder`)."""

    settings: Settings  # the endpoint's own copy (its token as the API key)

    def start_over(self, reader: ReadService) -> None:
        """Serve `reader`'s routes and advertise them in the store."""

    def stop(self) -> None:
        """Stop serving and remove the advert."""


class ReadService:
    """Searches, the document list and stats over a store someone else opened and closes.

    Args:
        settings: everything; `settings.serve` for the routes (query limit, batching, the API key).
        store: the open store.
        retriever: makes the `Retriever` over `store`, called once, at the first search: a process
            that holds the store without a model (an ingest before its first embedding) loads it
            only when someone searches.
    """

    def __init__(self, settings: Settings, store: TokenStore, retriever: Callable[[], Retriever]) -> None:
        self.settings = settings
        self.store = store
        self._make_retriever = retriever
        self._retriever: Retriever | None = None
        self._retriever_lock = threading.Lock()
        self.metrics = Metrics(queue_depth=self._queue_depth, cache_bytes=self._cache_bytes)
        self.closed = False

    @property
    def retriever(self) -> Retriever:
        """The `Retriever`, made at the first search (which may load the model)."""
        if self._retriever is None:
            with self._retriever_lock:
                if self._retriever is None:
                    self._retriever = self._make_retriever()
        return self._retriever

    def search_batch(self, queries: Sequence[str], top: int | None, filter: Filter | None) -> list[SearchResponse]:
        """`Retriever.search_batch`, the micro-batcher's callee."""
        return self.retriever.search_batch(queries, top, filter)

    def _queue_depth(self) -> float:
        return 0.0

    def _cache_bytes(self) -> float:
        return 0.0 if self._retriever is None else float(self._retriever.fetcher.cache.nbytes)

    def ready(self) -> bool:
        """Store open (the model loads at the first search)."""
        return not self.closed

    def close(self, timeout: float | None = None) -> None:
        """Stop answering; the store is its opener's to close."""
        self.closed = True


class Service(ReadService):
    """Opens the store once and loads the model once; searches and ingest jobs share both.

    The embedded Edge store admits one open handle per process tree (a file lock), so the
    `Retriever` and the job queue are given the same `TokenStore`; the Edge backend serialises its
    calls, and documents become visible only when whole (segments first, header last), so searches
    go on while a job writes. The model is wrapped in one `SerialEmbedder`: every model
    call, search or ingest, takes a turn from its scheduler, searches ahead of ingest forward batches
    (`retriever.serve.embedder`).

    Args:
        settings: everything; `settings.serve` for the service itself.
        embedder: an already loaded model (tests share one); loaded from `settings.model` when None.
        reads: makes an endpoint that answers other processes' reads of the store on loopback and
            advertises it in the store (`retriever.serve.holder.ReadEndpoint`, given by `chunkless
            serve`), so a `chunkless search` on the same store asks this service instead of failing on
            the store's lock; stopped first on close. None: no such endpoint.

    Raises:
        ModelLoadError: the model cannot be loaded.
        StoreBusyError: another process holds the embedded store.
        StoreMismatchError: the collection was made with another model or layout.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: TokenEmbedder | None = None,
        reads: Callable[[Settings], ReadsEndpoint] | None = None,
    ) -> None:
        self.embedder = SerialEmbedder(embedder or load_embedder(settings.model), settings.serve.ingest_batch_tokens)
        e = self.embedder
        store = open_or_create_store(settings.store, e.name, e.dim, e.pooling)
        self._endpoint: ReadsEndpoint | None = None
        try:
            retriever: Retriever = ScheduledRetriever(settings, self.embedder, store)
            super().__init__(settings, store, lambda: retriever)
            self._retriever = retriever
            # uploads a killed process left behind are never resumed, only cleared (its jobs read as interrupted)
            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool.mkdir(parents=True, exist_ok=True)
            url = settings.store.url
            self.jobs = JobQueue(
                settings,
                self.store,
                self.embedder,
                self.spool,
                on_tokens=self.metrics.tokens.inc,
                record=job_log(settings),
                # the embedded store (and qdrant-client's local mode) admit one process: what its record holds as
                # queued or running was left by a process that stopped
                exclusive=url is None or url == ":memory:" or url.startswith("local:"),
            )
            if reads is not None and url is None:  # a Qdrant server takes any number of clients itself
                self._endpoint = reads(settings)
                self._endpoint.start_over(ReadService(self._endpoint.settings, store, lambda: retriever))
        except BaseException:
            store.close()
            raise

    @property
    def spool(self) -> Path:
        """Where uploads wait for their job: beside the store, never inside a collection folder."""
        base = self.settings.store.store_path
        return base.parent / f"{base.name}.uploads"

    def _queue_depth(self) -> float:
        return float(self.jobs.depth())

    def ready(self) -> bool:
        """Model loaded, store open, job worker running."""
        return not self.closed and self.jobs.alive()

    def close(self, timeout: float | None = None) -> None:
        """Stop serving other processes' reads, let the document group being written finish, close the store."""
        if self.closed:
            return
        self.closed = True
        if self._endpoint is not None:
            self._endpoint.stop()
        self.jobs.stop(timeout)
        self.store.flush()
        self.store.close()
