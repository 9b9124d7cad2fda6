"""Helpers shared by tests (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import itertools

import numpy as np

from schemas.models import EmbeddedDocument, LoadedDocument


def fake_embedded(
    doc_id: str, n: int, dim: int, seed: int = 0, version: str = "a" * 64, window: int | None = None
) -> EmbeddedDocument:
    """Random unit token vectors over a synthetic text with one 'word' per token.

    Args:
        doc_id: the document's id (its source is /x/<doc_id>).
        n: tokens.
        dim: vector dimension.
        seed: random seed of the vectors.
        version: the content hash the store records as the version.
        window: tokens per embedding window (None: one window), each pooled as its mean, so that
            segments get distinct pooled vectors.

    Returns:
        The embedded document.
    """
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(n)]
    text = " ".join(words)
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    offsets = np.stack([starts, starts + [len(w) for w in words]], axis=1).astype(np.int64)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pooled = v.mean(0) / np.linalg.norm(v.mean(0))
    doc = LoadedDocument(doc_id=doc_id, source=f"/x/{doc_id}", title=doc_id, text=text, content_hash=version)
    cuts = [*list(range(0, n, window or n)), n]
    bounds = np.array(list(itertools.pairwise(cuts)), dtype=np.int64)
    wp = np.stack([v[a:b].mean(0) for a, b in bounds])
    wp /= np.linalg.norm(wp, axis=1, keepdims=True)
    if window is None:
        wp = pooled[None]
    return EmbeddedDocument(doc=doc, vectors=v, offsets=offsets, pooled=pooled, window_pooled=wp, window_bounds=bounds)
