"""The peer chunkless is timed against: a sentence index in the same embedded Qdrant (Edge).

Every sentence of the corpus (chunkless' own cutter, `indexer.boundaries.sentence_ranges`) is embedded
alone by the same model in its document form (`embed_texts`, what the eval's sentence baseline does),
and stored as one point with one float32 cosine vector under an HNSW index: the configuration of
chunkless' own pooled vectors (`indexer.store.vector_spaces`), in its own Edge folder. A query is the
same model's query form (`embed_queries`), then one nearest-neighbour query to Edge for `top` points.

Built through the store's public backend API (`indexer.store.EdgeBackend`, `NewPoint`, `VectorSpace`),
reused while the folder holds the same sentences of the same model, and optimised once after the build
(Edge runs no optimizer in the background; a deployed sentence index would be optimised).
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.boundaries import sentence_ranges
from indexer.embedders import TokenEmbedder
from indexer.sentence_vectors import embed_by_length
from indexer.store import EdgeBackend, NewPoint, VectorSpace

VECTOR = "sentence"
WRITE_BATCH = 256  # points per upsert


@dataclass(frozen=True)
class SentenceHit:
    """One sentence returned for a query: document, character range, cosine."""

    doc_id: str
    start: int
    end: int
    score: float


def cut_sentences(texts: dict[str, str]) -> list[tuple[str, int, int]]:
    """(doc_id, start, end) of every sentence of every document, in document order."""
    return [(d, a, b) for d, t in texts.items() for a, b in sentence_ranges(t)]


def _digest(model: str, texts: dict[str, str], pieces: Sequence[tuple[str, int, int]]) -> str:
    h = hashlib.sha256(model.encode())
    for d, a, b in pieces:
        h.update(f"{d}\0{a}\0{b}\0".encode())
        h.update(texts[d][a:b].encode())
    return h.hexdigest()


class SentenceIndex:
    """One vector per sentence in an Edge collection folder; `search` embeds queries and asks Edge.

    Args:
        folder: the collection's folder (created, or reused when it holds these sentences of this model).
        embedder: the model; queries go through its `embed_queries` (the query form).
        texts: doc_id -> document text.

    Attributes:
        n: sentences stored.
        built_s: seconds the build took (embedding and writing), 0 when reused.
    """

    def __init__(self, folder: Path, embedder: TokenEmbedder, texts: dict[str, str]) -> None:
        self.embedder = embedder
        pieces = cut_sentences(texts)
        digest = _digest(embedder.name, texts, pieces)
        self.backend = EdgeBackend(folder)
        self.built_s = 0.0
        if self.backend.exists() and self.backend.open().get("digest") == digest:
            self.n = len(pieces)
            return
        self.backend.close()
        shutil.rmtree(folder, ignore_errors=True)
        self.backend = EdgeBackend(folder)
        t0 = time.perf_counter()
        space = VectorSpace(size=embedder.dim, multivector=False, datatype="float32", distance="cosine", hnsw=True)
        self.backend.create({VECTOR: space}, {"model": embedder.name, "digest": digest}, keyword_fields=[])
        vecs = embed_by_length(embedder, [texts[d][a:b] for d, a, b in pieces])
        for k in range(0, len(pieces), WRITE_BATCH):
            self.backend.upsert(
                [
                    NewPoint(str(uuid.UUID(int=i + 1)), {VECTOR: vecs[i]}, {"doc_id": d, "start": a, "end": b})
                    for i, (d, a, b) in enumerate(pieces[k : k + WRITE_BATCH], start=k)
                ]
            )
        self.backend.flush()
        self.backend.compact()  # Edge's optimizers: segments merged and, past the indexing threshold, HNSW built
        self.built_s = time.perf_counter() - t0
        self.n = len(pieces)

    def indexed_vectors(self) -> int:
        """Vectors Edge has under a built HNSW graph (below the indexing threshold, search scans them)."""
        return int(self.backend.shard.info().indexed_vectors_count)

    def search(self, queries: Sequence[str], top: int = 5) -> tuple[list[list[SentenceHit]], float, float]:
        """The `top` nearest sentences per query.

        Returns:
            Hits per query, and milliseconds per query of the query embedding (one batched call) and of the
            Edge queries.
        """
        t0 = time.perf_counter()
        qv = np.asarray(self.embedder.embed_queries(list(queries)), dtype=np.float32)
        t1 = time.perf_counter()
        out = []
        for q in qv:
            recs = self.backend.query(VECTOR, q, top, None, True)
            out.append([SentenceHit(r.payload["doc_id"], r.payload["start"], r.payload["end"], r.score) for r in recs])
        t2 = time.perf_counter()
        n = max(len(queries), 1)
        return out, (t1 - t0) * 1e3 / n, (t2 - t1) * 1e3 / n

    def close(self) -> None:
        """Close the Edge shard."""
        self.backend.close()
