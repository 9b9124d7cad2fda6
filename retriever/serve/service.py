"""The parts one service process owns: the store, the model, the `Retriever` and the ingest job queue."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from indexer.embedders import TokenEmbedder, load_embedder
from indexer.store import TokenStore, open_or_create_store
from retriever.search import Retriever
from retriever.serve.embedder import ScheduledRetriever, SerialEmbedder
from retriever.serve.jobs import JobQueue, job_log
from retriever.serve.metrics import Metrics
from schemas.settings import Settings

log = logging.getLogger(__name__)


class Service:
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

    Raises:
        ModelLoadError: the model cannot be loaded.
        StoreBusyError: another process holds the embedded store.
        StoreMismatchError: the collection was made with another model or layout.
    """

    def __init__(self, settings: Settings, embedder: TokenEmbedder | None = None) -> None:
        self.settings = settings
        self.embedder = SerialEmbedder(embedder or load_embedder(settings.model), settings.serve.ingest_batch_tokens)
        e = self.embedder
        self.store: TokenStore = open_or_create_store(settings.store, e.name, e.dim, e.pooling)
        # uploads a killed process left behind are never resumed, only cleared (its jobs read as interrupted)
        shutil.rmtree(self.spool, ignore_errors=True)
        self.spool.mkdir(parents=True, exist_ok=True)
        try:
            self.retriever: Retriever = ScheduledRetriever(settings, self.embedder, self.store)
            self.metrics = Metrics(queue_depth=lambda: self.jobs.depth(), cache_bytes=self._cache_bytes)
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
        except BaseException:
            self.store.close()
            raise
        self.closed = False

    @property
    def spool(self) -> Path:
        """Where uploads wait for their job: beside the store, never inside a collection folder."""
        base = self.settings.store.store_path
        return base.parent / f"{base.name}.uploads"

    def _cache_bytes(self) -> float:
        return float(self.retriever.fetcher.cache.nbytes)

    def ready(self) -> bool:
        """Model loaded, store open, job worker running."""
        return not self.closed and self.jobs.alive()

    def close(self, timeout: float | None = None) -> None:
        """Let the document group being written finish, then close the store."""
        if self.closed:
            return
        self.closed = True
        self.jobs.stop(timeout)
        self.store.flush()
        self.store.close()
