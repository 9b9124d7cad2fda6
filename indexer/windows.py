"""The window plan: where a long document's embedding windows lie, and which window each token takes.

A document longer than the model's window is embedded in overlapping windows of `width` content
tokens every `stride` tokens, the last one flush with the end. Each token keeps the vector of the
window in which it sits most centrally (the largest distance to the window's nearer edge; the
earlier window on a tie), where it saw the most context on both sides. Every backend plans its
windows here, and so does the part-by-part embedding of long documents (`indexer.long_documents`),
which is why a document embedded in parts stores exactly what a whole embedding stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of document `doc` (an index into the batch) embedded in one model call."""

    doc: int
    start: int
    end: int


def window_bounds(n_tokens: int, width: int, stride: int) -> np.ndarray:
    """(n_windows, 2) int64 token [start, end) of the windows over `n_tokens` tokens.

    Built in numpy: a very long document's plan is one small array, never a Python list of windows.
    """
    if n_tokens <= width:
        return np.array([[0, n_tokens]], dtype=np.int64)
    starts = np.append(np.arange(0, n_tokens - width, stride, dtype=np.int64), n_tokens - width)
    return np.stack([starts, np.minimum(starts + width, n_tokens)], axis=1)


def window_starts(n_tokens: int, width: int, stride: int) -> list[int]:
    """Start offsets of the windows `window_bounds` plans."""
    return [int(s) for s in window_bounds(n_tokens, width, stride)[:, 0]]


def plan_windows(lengths: Sequence[int], width: int, stride: int) -> list[Window]:
    """All windows of a batch of documents of `lengths` tokens, in document order."""
    return [
        Window(k, int(s), int(e)) for k, n in enumerate(lengths) for s, e in window_bounds(n, width, stride).tolist()
    ]


def owners(bounds: np.ndarray, ts: int, te: int) -> np.ndarray:
    """For tokens [ts, te), the index of the window (bounds: (n_windows, 2), as planned) where each is most central.

    Window starts and ends both increase, so the windows holding a token of [ts, te) are one run of
    indices; only those are scanned, in order, with a strict comparison (the earlier window wins a
    tie): any token range gets what the whole document gets.
    """
    ka = int(np.searchsorted(bounds[:, 1], ts, "right"))  # first window ending after ts
    kb = int(np.searchsorted(bounds[:, 0], te, "left"))  # first window starting at or after te
    best = np.full(te - ts, -1, dtype=np.int64)
    best_margin = np.full(te - ts, -1, dtype=np.int64)
    for w in range(ka, kb):  # loop over windows (few), not tokens
        s, e = int(bounds[w, 0]), int(bounds[w, 1])
        a, b = max(s, ts), min(e, te)
        idx = np.arange(a, b)
        margin = np.minimum(idx - s, e - 1 - idx)
        better = margin > best_margin[a - ts : b - ts]
        best[a - ts : b - ts][better] = w
        best_margin[a - ts : b - ts][better] = margin[better]
    return best


def assign_central(n_tokens: int, bounds: np.ndarray) -> np.ndarray:
    """For each of a document's `n_tokens` tokens, the index of the window where it is most central."""
    return owners(np.asarray(bounds, dtype=np.int64).reshape(-1, 2), 0, n_tokens)


# padded widths are multiples of this: few distinct widths keep batches full (docs/operations.md: 32 cost
# nothing measurable on 150 short documents, 16 cost 15-36% in smaller forward passes, 64 too much padding)
PAD_MULTIPLE = 32


def padded_batches(
    seqs: Sequence[Sequence[int]], attend: Sequence[int] | None, window: int, budget: int, pad_id: int
) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """The padded batches sequences run in, for every backend: widest first, each of one width.

    A sequence's width depends on its length alone (rounded up to PAD_MULTIPLE, never past `window` unless
    it is longer), so what it is batched with never changes its vectors.

    Args:
        seqs: model input ids per sequence.
        attend: per sequence, how many leading tokens are attended (None: all).
        window: the model's window (widest padding).
        budget: most padded tokens a batch holds (a sequence wider than it runs alone).
        pad_id: the tokenizer's padding id.

    Returns:
        (sequence indices, ids (b, L) int64, attention mask (b, L) int64) per batch.
    """
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    widths = np.maximum(np.minimum(-(-lengths // PAD_MULTIPLE) * PAD_MULTIPLE, window), lengths)
    order = np.lexsort((-lengths, -widths))  # widest first; within a width, longest first
    out = []
    i = 0
    while i < len(order):
        width = int(widths[order[i]])
        same = int(np.searchsorted(-widths[order[i:]], -width, side="right"))  # sequences of this width
        n = max(1, min(same, budget // max(width, 1)))
        rows = [int(j) for j in order[i : i + n]]
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, j in enumerate(rows):
            ids[r, : lengths[j]] = seqs[j]
            mask[r, : (attend[j] if attend is not None else lengths[j])] = 1
        out.append((rows, ids, mask))
        i += n
    return out
