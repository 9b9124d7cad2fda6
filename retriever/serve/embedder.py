"""One embedding model shared by the searches and the ingest jobs of a service, searches first.

The tokenizer (Rust, with mutable truncation state) and the model are not safe to call from two threads
at once, and on a small CPU an ingest forward batch and a search slow each other down when they run
together. So one `ModelScheduler` decides who runs next:

- a search's model call waits only for the forward batch running now;
- an ingest job runs one forward batch (or tokenizer call) at a time, and only while no search is
  running (`searching`, held around a whole `search_batch`: embedding, recall, fetch and scoring) or
  waiting for the model, except that each search that ends while ingest waits owes it one batch, so
  ingest still moves under a steady stream of searches.

A search therefore waits at most one ingest forward batch, of at most `ServeSettings.ingest_batch_tokens`
padded tokens (docs/operations.md measures the trade-off against ingest tokens/s).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import numpy as np

from indexer.embedders import (
    DelegatingEmbedder,
    EncodedQuery,
    TokenEmbedder,
    WindowEmbedder,
    scheduled_by,
)
from indexer.store import TokenStore
from retriever.search import Filter, Retriever
from schemas.models import EmbeddedDocument, LoadedDocument, SearchResponse
from schemas.settings import Settings


class ModelScheduler:
    """Searches first, ingest between them: who takes the model next.

    Args:
        ingest_batch_tokens: the most padded tokens in one ingest forward batch (the longest a search waits).
    """

    def __init__(self, ingest_batch_tokens: int | None = None) -> None:
        self._cond = threading.Condition()
        self._busy = False  # the model (or tokenizer) is in use
        self._searches_running = 0  # whole search batches in progress
        self._searches_waiting = 0  # searches waiting for the model
        self._ingest_waiting = 0
        self._ingest_owed = False  # a search ended while ingest waited: ingest goes next
        self.ingest_turns = 0  # ingest forward batches and tokenizer calls so far (tests, docs/operations.md)
        self.ingest = _IngestTurns(self, ingest_batch_tokens)

    @contextmanager
    def searching(self) -> Iterator[None]:
        """Held around a whole search: no ingest batch starts meanwhile (unless one is owed)."""
        with self._cond:
            self._searches_running += 1
        try:
            yield
        finally:
            with self._cond:
                self._searches_running -= 1
                if self._ingest_waiting:
                    self._ingest_owed = True
                self._cond.notify_all()

    @contextmanager
    def model(self, ingest: bool) -> Iterator[None]:
        """Hold the model: a search waits for the batch running now; ingest also waits for searches."""
        with self._cond:
            if ingest:
                self._ingest_waiting += 1
                try:
                    self._cond.wait_for(self._ingest_may_run)
                finally:
                    self._ingest_waiting -= 1
                self._ingest_owed = False
                self.ingest_turns += 1
            else:
                self._searches_waiting += 1
                try:
                    self._cond.wait_for(lambda: not self._busy)
                finally:
                    self._searches_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _ingest_may_run(self) -> bool:
        if self._busy:
            return False
        return self._ingest_owed or (self._searches_running == 0 and self._searches_waiting == 0)


class _IngestTurns:
    """The `ForwardScheduler` an ingest job's forward batches run under (`scheduled_by`)."""

    def __init__(self, scheduler: ModelScheduler, batch_tokens: int | None) -> None:
        self._scheduler = scheduler
        self.batch_tokens = batch_tokens

    def turn(self) -> AbstractContextManager[None]:
        return self._scheduler.model(ingest=True)


class SerialEmbedder(DelegatingEmbedder):
    """A `TokenEmbedder` whose every model call takes its turn from one `ModelScheduler`.

    The `Retriever` serialises its own calls, but an ingest job calls the model from its own thread; giving
    both this one wrapper makes every call, search or ingest, take a turn. A backend that declares
    `Capabilities.scheduled` takes an ingest turn per forward batch and tokenizer call (`scheduled_by`),
    in batches of `ingest_batch_tokens`; any other backend is held per document (a long one: per part,
    `windows()`).

    Args:
        inner: the loaded model.
        ingest_batch_tokens: the most padded tokens in one ingest forward batch (None: the model's own).
    """

    def __init__(self, inner: TokenEmbedder, ingest_batch_tokens: int | None = None) -> None:
        super().__init__(inner)
        self.scheduler = ModelScheduler(ingest_batch_tokens)
        self.parts = 0  # parts of long documents embedded (`windows()`), for tests and the bench
        self.whole_documents = 0  # documents embedded whole (`embed_documents`)
        # set by the job queue while it runs a job: called with tokens embedded, so a job's `tokens_done`
        # moves while one large file is embedded (an estimate, replaced by the report's count per group)
        self.on_embedded: Callable[[int], None] | None = None

    def _embedded(self, tokens: int) -> None:
        hook = self.on_embedded
        if hook is not None and tokens > 0:
            hook(tokens)

    def _turn(self, ingest: bool) -> AbstractContextManager[None]:
        return self.scheduler.model(ingest)

    def searching(self) -> AbstractContextManager[None]:
        """Held around a whole search, so ingest batches wait for it (see `ModelScheduler`)."""
        return self.scheduler.searching()

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        """Token vectors of whole documents: a turn per forward batch, or per document for a backend that
        cannot be scheduled.

        Returns:
            One `EmbeddedDocument` per input document, in order.
        """
        self.whole_documents += len(docs)
        if self.capabilities.scheduled:
            with scheduled_by(self.scheduler.ingest):
                out = self.inner.embed_documents(docs)
            self._embedded(sum(e.n_tokens for e in out))
            return out
        out = []
        for d in docs:  # per document: a search slips in between two documents of an ingest batch
            with self._turn(ingest=True):
                one = self.inner.embed_documents([d])
            self._embedded(sum(e.n_tokens for e in one))
            out += one
        return out

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        """Token ids and character offsets of `text` (the tokenizer is not thread-safe either)."""
        with self._turn(ingest=False):
            return self.inner.tokenize(text)

    def embed_query(self, query: str) -> np.ndarray:
        """Pooled unit vector (dim,) of a query."""
        with self._turn(ingest=False):
            return self.inner.embed_query(query)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of several queries, one batched forward pass."""
        with self._turn(ingest=False):
            return self.inner.embed_queries(queries)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        """Unit vectors (m, dim) of a query's tokens (MaxSim)."""
        with self._turn(ingest=False):
            return self.inner.embed_query_tokens(query)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of short texts embedded alone (re-ranking)."""
        with self._turn(ingest=False):
            return self.inner.embed_texts(texts)

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedQuery]:
        """Pooled and token vectors of queries, from one forward pass where the model can."""
        with self._turn(ingest=False):
            return self.inner.encode_queries(queries)

    def windows(self) -> WindowEmbedder:
        """The model's windows for a long upload embedded part by part: a turn per forward batch (per part
        for a backend that cannot be scheduled), so a search never waits for the whole document."""
        return _SerialWindows(self, self.inner.windows())


class _SerialWindows:
    """A model's `WindowEmbedder` whose calls take ingest turns from the `SerialEmbedder`'s scheduler."""

    def __init__(self, owner: SerialEmbedder, inner: WindowEmbedder) -> None:
        self._owner, self._inner = owner, inner
        self.dim, self.content, self.stride = inner.dim, inner.content, inner.stride

    def _held(self) -> AbstractContextManager[None]:
        if self._owner.capabilities.scheduled:  # the backend takes its turns itself, per batch
            return scheduled_by(self._owner.scheduler.ingest)
        return self._owner.scheduler.model(ingest=True)

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        with self._held():
            return self._inner.tokenize(text)

    def embed_windows(self, windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        with self._held():
            out = self._inner.embed_windows(windows)
        self._owner.parts += 1
        # each window owns about `stride` of its tokens (the rest overlaps its neighbours)
        self._owner._embedded(sum(min(len(w), self.stride) for w in windows))
        return out


class ScheduledRetriever(Retriever):
    """The service's `Retriever`: each search batch is held as `searching` on the model's scheduler, so an
    ingest job's next forward batch waits until the search is answered (not only until its query is embedded).

    Args:
        settings: the service's settings.
        embedder: the service's `SerialEmbedder`.
        store: the one open store.
    """

    def __init__(self, settings: Settings, embedder: SerialEmbedder, store: TokenStore) -> None:
        super().__init__(settings, embedder=embedder, store=store)
        self._scheduler = embedder.scheduler

    def search_batch(
        self, queries: Sequence[str], top: int | None = None, filter: Filter | None = None
    ) -> list[SearchResponse]:
        """`Retriever.search_batch`, ahead of ingest batches."""
        with self._scheduler.searching():
            return super().search_batch(queries, top, filter)
