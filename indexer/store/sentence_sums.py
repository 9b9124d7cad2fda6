"""Sentence sums in segment payloads: what the sentence method reads instead of a segment's token rows.

For a pooled-hidden model the sentence method scores a sentence by the cosine of the sum of its
in-context token rows with the query (`Scorer.sentence_scores`): Σ(row · q) / ‖Σ row‖. Neither needs
the rows themselves, only each sentence's sum. A fetch of 8 segments of 256 rows at 384-d converts
786k Python floats (Edge returns vectors as lists: 20 of a cold pdf-manuals-dev query's 25 ms of
fetch, docs/speed.md); their sums are about 14 rows a segment, read from the payload with one
`frombuffer`.

A segment's pieces are its rows cut at its own sentence ends (`indexer.boundaries.sentence_rows` over
the flags `token_ends_sentence` gives its text under the collection's rule) and at its last row: a
sentence that runs on into the next segment is two pieces, which a fetched run of both joins again
(`retriever.sentence_table`). Each piece's sum is of the rows as stored and decoded (float16 rows
rounded as a query sees them), in float32, so scores from sums equal scores from rows up to the
order of additions. Written with the segment, they are replaced, deleted and compacted with it.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from indexer.boundaries import sentence_rows, token_ends_sentence
from schemas.settings import Boundary

SUMS_KEY = "sums"  # (P, dim) float32 piece sums, base64
RULE_KEY = "sums_rule"  # the sentence-end rule the pieces were cut by


def piece_starts(text: str, starts: np.ndarray, rule: Boundary) -> np.ndarray:
    """First row of each piece of one segment.

    Args:
        text: the segment's text.
        starts: (n,) its rows' first characters, relative to `text`.
        rule: the sentence-end rule.

    Returns:
        (P,) int64, ascending from 0; empty for a segment without rows.
    """
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    first, _, _ = sentence_rows(token_ends_sentence(text, starts, rule))
    return first


def segment_payload(rows: np.ndarray, text: str, starts: np.ndarray, rule: Boundary) -> dict[str, Any]:
    """The payload entries holding one segment's piece sums.

    Args:
        rows: (n, dim) the segment's rows as a query decodes them.
        text: the segment's text.
        starts: (n,) the rows' first characters, relative to `text`.
        rule: the sentence-end rule.

    Returns:
        {SUMS_KEY: base64 of (P, dim) float32, RULE_KEY: rule}.
    """
    rows = np.asarray(rows, dtype=np.float32)
    first = piece_starts(text, starts, rule)
    sums = np.add.reduceat(rows, first, axis=0) if len(first) else np.zeros((0, rows.shape[1]), np.float32)
    raw = base64.b64encode(np.ascontiguousarray(sums, dtype=np.float32).tobytes()).decode("ascii")
    return {SUMS_KEY: raw, RULE_KEY: rule}


def read_sums(payload: dict[str, Any], dim: int, rule: Boundary) -> np.ndarray | None:
    """A fetched segment's piece sums, when it has them under this rule.

    Args:
        payload: the segment's payload.
        dim: the stored rows' dimension.
        rule: the rule the reader cuts sentences by.

    Returns:
        (P, dim) float32, or None: none stored, or cut by another rule (the rows must be read instead).
    """
    raw = payload.get(SUMS_KEY)
    if raw is None or payload.get(RULE_KEY) != rule:
        return None
    return np.frombuffer(base64.b64decode(raw), dtype=np.float32).reshape(-1, dim)
