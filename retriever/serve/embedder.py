"""One embedding model shared by the searches and the ingest jobs of a service."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

import numpy as np

from indexer.embedders import HFTokenEmbedder
from schemas.models import EmbeddedDocument, LoadedDocument


class SerialEmbedder:
    """A `TokenEmbedder` that holds one lock around every model call.

    The tokenizer (Rust, with mutable truncation state) and the model are not safe to call from two
    threads at once. The `Retriever` serialises its own calls, but an ingest job calls the model from
    its own thread; giving both this one wrapper makes every call, search or ingest, take the same
    lock. Ingest takes it per document, so a search waits at most for one document's embedding, never
    for a job's whole batch of documents.

    Args:
        inner: the loaded model.
    """

    def __init__(self, inner: HFTokenEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.pooling: Literal["last", "mean"] = inner.pooling
        self.lock = threading.Lock()

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        """Token vectors of whole documents, one document at a time under the lock.

        Returns:
            One `EmbeddedDocument` per input document, in order.
        """
        out: list[EmbeddedDocument] = []
        for d in docs:  # per document: a search slips in between two documents of an ingest batch
            with self.lock:
                out += self.inner.embed_documents([d])
        return out

    def embed_query(self, query: str) -> np.ndarray:
        """Pooled unit vector (dim,) of a query."""
        with self.lock:
            return self.inner.embed_query(query)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of several queries, one batched forward pass."""
        with self.lock:
            return self.inner.embed_queries(queries)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        """Unit vectors (m, dim) of a query's tokens (MaxSim)."""
        with self.lock:
            return self.inner.embed_query_tokens(query)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of short texts embedded alone (re-ranking)."""
        with self.lock:
            return self.inner.embed_texts(texts)
