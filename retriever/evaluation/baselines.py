"""Baselines for `chunkless eval`: pre-cut pieces, each embedded alone, ranked by cosine with the query.

- fixed-size chunks: consecutive runs of `size` tokens (the model's tokenizer), no overlap;
- sentences: each sentence under indexer.boundaries' "sentences" rule.
Both use the same model and query vectors as chunkless, and return benchmark `Hit`s, best first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from indexer.boundaries import sentence_ranges
from indexer.embedders import TokenEmbedder
from retriever.evaluation.benchmark import Benchmark, BenchQuery, Hit

Piece = tuple[str, int, int]  # doc_id, char start, char end


def query_vectors(embedder: TokenEmbedder, queries: Sequence[str]) -> np.ndarray:
    """(n, dim) query vectors, batched when the embedder can."""
    return np.asarray(embedder.embed_queries(list(queries)), dtype=np.float32)


def token_chunks(bench: Benchmark, embedder: TokenEmbedder, size: int) -> list[Piece]:
    """Each document cut into runs of `size` tokens; a chunk covers its first token's start to its last's end."""
    out: list[Piece] = []
    for d in bench.docs:
        off = token_offsets(embedder, d.text)
        for i in range(0, len(off), size):
            last = min(i + size, len(off)) - 1
            out.append((d.doc_id, int(off[i, 0]), int(off[i : last + 1, 1].max())))
    return out


def sentences(bench: Benchmark) -> list[Piece]:
    """Every sentence of every document (indexer.boundaries' "sentences" rule)."""
    return [(d.doc_id, a, b) for d in bench.docs for a, b in sentence_ranges(d.text)]


def rank_pieces(
    bench: Benchmark, queries: list[BenchQuery], embedder: TokenEmbedder, pieces: list[Piece], top: int = 5
) -> tuple[list[list[Hit]], float]:
    """Embed every piece alone, rank them by cosine per query; seconds counts the query side only."""
    texts = {d.doc_id: d.text for d in bench.docs}
    vecs = embedder.embed_texts([texts[d][a:b] for d, a, b in pieces])  # ingest cost, not query time
    t0 = time.perf_counter()
    qv = query_vectors(embedder, [q.query for q in queries])
    sims = qv @ vecs.T  # (n_queries, n_pieces)
    k = min(top, len(pieces))
    best = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k else np.zeros((len(queries), 0), dtype=int)
    out = []
    for row, cand in zip(sims, best, strict=True):
        order = cand[np.argsort(-row[cand])]
        out.append(
            [
                Hit(
                    pieces[i][0],
                    pieces[i][1],
                    pieces[i][2],
                    texts[pieces[i][0]][pieces[i][1] : pieces[i][2]],
                    float(row[i]),
                )
                for i in order
            ]
        )
    return out, time.perf_counter() - t0


def chunk_baseline(
    bench: Benchmark, queries: list[BenchQuery], embedder: TokenEmbedder, size: int
) -> tuple[list[list[Hit]], float]:
    return rank_pieces(bench, queries, embedder, token_chunks(bench, embedder, size))


def sentence_baseline(
    bench: Benchmark, queries: list[BenchQuery], embedder: TokenEmbedder
) -> tuple[list[list[Hit]], float]:
    return rank_pieces(bench, queries, embedder, sentences(bench))


def token_offsets(embedder: TokenEmbedder, text: str) -> np.ndarray:
    """(n, 2) character ranges of the model's tokens of `text`."""
    return embedder.tokenize(text)[1]
