"""Sentence vectors in segment payloads: each written with the segment its sentence starts in.

They live in the segment point's payload (float16, base64) rather than in a named vector: a segment
may start no sentence (a named multivector cannot be empty), they are never searched, and base64
decodes with one `frombuffer` where a returned vector is a Python list of floats to convert. Being
part of the segment, they are replaced, deleted, swept as orphans and compacted with it.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from indexer.store.backend import PointsBackend
from indexer.store.segments import segment_id
from schemas.models import SentenceVectors

# payload keys as stores already hold them (the name is older than "sentence vectors")
CHARS_KEY = "alone_chars"  # flat [start, end, start, end, ...] of the sentences starting in the segment
VECTORS_KEY = "alone"  # their (k, dim) float16 unit rows, base64

# (doc_id, version, char start, char end) -> (dim,) float32
SentenceKey = tuple[str, str, int, int]


def segment_payload(sv: SentenceVectors, char_start: int, char_end: int) -> dict[str, Any]:
    """The payload entries of the sentences that start in one segment's characters [char_start, char_end).

    Args:
        sv: the document's sentences and their sentence vectors.
        char_start: the segment's first character.
        char_end: one past its last (segments tile the text, so every sentence lands in exactly one).

    Returns:
        {CHARS_KEY: [...], VECTORS_KEY: "..."}; empty lists when no sentence starts there.
    """
    pick = (sv.chars[:, 0] >= char_start) & (sv.chars[:, 0] < char_end)
    rows = np.ascontiguousarray(sv.vectors[pick], dtype=np.float16)
    return {
        CHARS_KEY: sv.chars[pick].reshape(-1).tolist(),
        VECTORS_KEY: base64.b64encode(rows.tobytes()).decode("ascii"),
    }


def read_sentence_vectors(
    backend: PointsBackend, dim: int, wanted: dict[tuple[str, str], list[int]]
) -> dict[SentenceKey, np.ndarray]:
    """The stored sentence vectors of the sentences starting in some segments.

    Args:
        backend: the collection's backend.
        dim: the model's dimension.
        wanted: (doc_id, version) -> segment indices.

    Returns:
        (doc_id, version, char start, char end) -> (dim,) float32 unit vector; segments written without
        them (another collection setting, or a document written in parts) add nothing.
    """
    if not wanted:
        return {}
    # by id: a filter on the segment index would read every segment of a long document
    ids = [segment_id(d, v, int(i)) for (d, v), idx in wanted.items() for i in idx]
    recs = backend.retrieve(ids, [], ["doc_id", "version", CHARS_KEY, VECTORS_KEY])
    out: dict[SentenceKey, np.ndarray] = {}
    for r in recs:
        p = r.payload
        chars = p.get(CHARS_KEY)
        if not chars:
            continue
        rows = np.frombuffer(base64.b64decode(p[VECTORS_KEY]), dtype=np.float16).reshape(-1, dim).astype(np.float32)
        for i, row in enumerate(rows):
            out[(p["doc_id"], p["version"], int(chars[2 * i]), int(chars[2 * i + 1]))] = row
    return out
