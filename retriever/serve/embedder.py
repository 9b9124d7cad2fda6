"""One embedding model shared by the searches and the ingest jobs of a service."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from indexer.embedders import DelegatingEmbedder, EncodedQuery, TokenEmbedder, WindowEmbedder
from schemas.models import EmbeddedDocument, LoadedDocument


class SerialEmbedder(DelegatingEmbedder):
    """A `TokenEmbedder` that holds one lock around every model call.

    The tokenizer (Rust, with mutable truncation state) and the model are not safe to call from two
    threads at once. The `Retriever` serialises its own calls, but an ingest job calls the model from
    its own thread; giving both this one wrapper makes every call, search or ingest, take the same
    lock. Ingest takes it per document (a long document: per part, `windows()`) and yields to waiting
    searches after each one (a plain lock is not fair: the job's thread would take it straight back),
    so a search waits at most for one document's (or part's) embedding, and under steady search load
    ingest still gets every other turn.

    Args:
        inner: the loaded model.
    """

    def __init__(self, inner: TokenEmbedder) -> None:
        super().__init__(inner)
        self._cond = threading.Condition()
        self._busy = False
        self._searches_waiting = 0
        self._ingest_had_turn = False

    @contextmanager
    def _turn(self, ingest: bool) -> Iterator[None]:
        """Hold the model; ingest waits while searches wait and it had the last turn."""
        with self._cond:
            if ingest:
                self._cond.wait_for(lambda: not self._busy and not (self._searches_waiting and self._ingest_had_turn))
            else:
                self._searches_waiting += 1
                try:
                    self._cond.wait_for(lambda: not self._busy)
                finally:
                    self._searches_waiting -= 1
            self._busy = True
            self._ingest_had_turn = ingest
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        """Token vectors of whole documents, one document at a time under the lock.

        Returns:
            One `EmbeddedDocument` per input document, in order.
        """
        out: list[EmbeddedDocument] = []
        for d in docs:  # per document: a search slips in between two documents of an ingest batch
            with self._turn(ingest=True):
                out += self.inner.embed_documents([d])
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
        """The model's windows for a long upload embedded part by part, each part's forward pass under the
        lock: a search waits at most for one part, not for the whole document."""
        return _SerialWindows(self, self.inner.windows())


class _SerialWindows:
    """A model's `WindowEmbedder` whose every call takes the `SerialEmbedder`'s turn."""

    def __init__(self, owner: SerialEmbedder, inner: WindowEmbedder) -> None:
        self._owner, self._inner = owner, inner
        self.dim, self.content, self.stride = inner.dim, inner.content, inner.stride

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        return self._owner.tokenize(text)

    def embed_windows(self, windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        with self._owner._turn(ingest=True):
            return self._inner.embed_windows(windows)
