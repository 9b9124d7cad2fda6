"""Ranking rows: what MaxSim scans first to find the segments worth ranking exactly.

MaxSim over every stored token row of the recalled documents grows with their length: 57 ms for the
508k rows of pdf-manuals-dev's five manuals, the largest cost of a query against a sentence index's
18 ms (docs/speed.md). A collection made with `StoreSettings.rank_pool` p > 0 stores beside each
segment's token rows a "rank" multivector: the rows mean-pooled p at a time (unit length again), which
Qdrant keeps with an int8 copy. `TokenStore.rank_segments` then asks one engine call for two stages:
MaxSim over the int8 ranking rows picks `candidates(k)` segments (no rescoring), and MaxSim over those
segments' stored rows ranks them exactly. The scores are the stored rows' MaxSim; only a segment the
first stage misses can change the answer. pdf-manuals-dev, 120 questions, float pooled rows (k = 8):
at p = 3 and 192 candidates the first stage held all 8 best segments for every question (128: 98.3%);
at p = 4 it missed one of the 8 on 2.5% of questions however many candidates (up to 256); at p = 2 and
128, none missed, for twice the rows scanned.

Pooled rows straddle nothing a span needs: they are never fetched or scored, only searched. Where the
recalled documents hold fewer than twice the candidates, the first stage would pass on most of them,
and MaxSim scans the stored rows at once.
"""

from __future__ import annotations

import numpy as np

# segments the int8 stage hands to exact MaxSim per segment wanted (which reads their stored rows, ~1.6 ms
# per 64 segments of 256 rows, more on a fresh process's first touch of them), and never fewer than
# RANK_CANDIDATES_MIN. 16 rather than 24: the same results on every squad2-dev and financebench-dev
# question and the same pdf-manuals-dev metrics (2 of 297 questions' lower spans differ), cold
# pdf-manuals-dev ratio 3.0 -> 2.8 (docs/speed.md, phase 4)
RANK_CANDIDATES_PER_SEGMENT = 16
RANK_CANDIDATES_MIN = 64


def candidates(k: int) -> int:
    """Segments the first stage passes on when `k` are wanted: 128 for pdf-manuals-dev's 8, 64 for 4."""
    return max(RANK_CANDIDATES_MIN, RANK_CANDIDATES_PER_SEGMENT * k)


def ranking_rows(rows: np.ndarray, pool: int) -> np.ndarray:
    """A segment's token rows mean-pooled `pool` consecutive rows at a time, each made unit length again.

    Args:
        rows: (n, dim) float token rows of one segment (n >= 1).
        pool: rows per group (the last group may be shorter).

    Returns:
        (ceil(n / pool), dim) float32.
    """
    rows = np.asarray(rows, dtype=np.float32)
    n, dim = rows.shape
    groups = -(-n // pool)
    pad = np.zeros((groups * pool - n, dim), dtype=np.float32)
    sums = np.concatenate([rows, pad]).reshape(groups, pool, dim).sum(axis=1)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.maximum(norms, 1e-12)
