"""The span method written the obvious way (scipy + Python loops), per document: the oracle for retriever.spans."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d


def reference_spans(
    r: np.ndarray,
    ends_sentence: np.ndarray,
    sigma: float,
    threshold: float,
    delta: int,
    min_span_size: int,
    max_extension: int,
) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Smoothed signal and (start, end inclusive, score) spans of one document."""
    s = gaussian_filter1d(r.astype(np.float64), sigma, mode="nearest") if sigma > 0 else r.astype(np.float64)
    n = len(r)
    kept = [i for i in range(n) if s[i] > threshold]
    clusters: list[list[int]] = []
    for i in kept:
        if clusters and i - clusters[-1][-1] <= delta:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    spans = []
    for c in clusters:
        start, end = c[0], c[-1]
        if end - start + 1 < min_span_size:
            continue
        score = max(s[i] for i in c)
        new_start = start
        for step in range(1, max_extension + 1):  # walk back until just after a sentence end
            j = start - step
            if j < 0 or ends_sentence[j]:
                break
            new_start = j
        new_end = end
        for step in range(0, max_extension + 1):  # walk forward until a sentence end (inclusive)
            j = end + step
            if j >= n:
                break
            new_end = j
            if ends_sentence[j]:
                break
        spans.append([new_start, new_end, score])
    merged: list[list] = []
    for sp in spans:
        if merged and sp[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], sp[1])
            merged[-1][2] = max(merged[-1][2], sp[2])
        else:
            merged.append(sp)
    return s, [(a, b, c) for a, b, c in merged]
