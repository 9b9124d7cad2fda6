"""Cut an embedded document into store points small enough for a Qdrant server.

A Qdrant server rejects a multivector of 1,048,576 numbers or more, and Edge does not check, so
every segment holds at most floor((2**20 - 1) / dim) tokens: 1,023 at 1024-d, 2,730 at 384-d.
Segment character ranges tile the text exactly (first from 0, each up to the next one's start, the
last to the end), so joining the segments' text gives the document back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from schemas.models import EmbeddedDocument

MAX_MULTIVECTOR_NUMBERS = 1_048_576  # a Qdrant server's limit is "fewer than this"
POINT_NAMESPACE = uuid.UUID("6f1c7d8e-2b9a-4c51-9a57-1d0f3c9e8b42")


def max_segment_tokens(dim: int) -> int:
    """Most tokens a segment may hold at this dimension."""
    return (MAX_MULTIVECTOR_NUMBERS - 1) // dim


@dataclass(frozen=True)
class Segment:
    """One store point's worth of a document."""

    index: int
    tok_start: int  # first token's index in the document
    vectors: np.ndarray  # (n, dim) float32
    offsets: np.ndarray  # (n, 2) absolute character offsets
    char_start: int
    char_end: int
    pooled: np.ndarray  # (dim,) unit


def split_segments(emb: EmbeddedDocument, max_tokens: int | None = None) -> list[Segment]:
    """Split into balanced segments of at most `max_tokens` rows (default: the server limit)."""
    n, dim = emb.vectors.shape
    cap = min(max_tokens or max_segment_tokens(dim), max_segment_tokens(dim))
    count = max(1, -(-n // cap))
    cuts = np.linspace(0, n, count + 1).round().astype(int)  # balanced: no tiny tail segment
    text_len = len(emb.doc.text)
    char_cuts = [0] + [int(emb.offsets[c, 0]) for c in cuts[1:-1]] + [text_len]
    segs = []
    for i in range(count):
        s, e = int(cuts[i]), int(cuts[i + 1])
        segs.append(
            Segment(
                index=i,
                tok_start=s,
                vectors=emb.vectors[s:e],
                offsets=emb.offsets[s:e],
                char_start=char_cuts[i],
                char_end=char_cuts[i + 1],
                pooled=_segment_pooled(emb, s, e),
            )
        )
    return segs


def _segment_pooled(emb: EmbeddedDocument, s: int, e: int) -> np.ndarray:
    """Window pooled vectors weighted by how many of their tokens fall in [s, e): stays in the model's pooled space."""
    b = emb.window_bounds
    overlap = np.clip(np.minimum(b[:, 1], e) - np.maximum(b[:, 0], s), 0, None).astype(np.float32)
    v = (emb.window_pooled * overlap[:, None]).sum(0)
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else emb.pooled


def header_id(doc_id: str) -> str:
    """Deterministic id of a document's header point (one per doc_id, overwritten on change)."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}\x00header"))


def segment_id(doc_id: str, version: str, index: int) -> str:
    """Deterministic id of a segment: concurrent writers of the same content produce the same points."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}\x00{version}\x00{index}"))
