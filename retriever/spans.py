"""Spans from per-token relevance, for many documents at once, with no Python loop over tokens.

All documents of a query are laid end to end in one flat tensor (N tokens); `doc_starts` (B+1,)
marks where each begins. Steps: Gaussian smoothing with "nearest" edges per
document, threshold, cluster kept tokens whose gaps are <= delta, drop clusters shorter than
min_span_size, extend to the nearest sentence end within max_extension tokens, merge overlaps,
score each span by its smoothed maximum.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from schemas.settings import SpanSettings


@dataclass(frozen=True)
class SpanParams:
    """The threshold method's parameters, in stored rows (see `per_row`)."""

    sigma: float = 4.0
    threshold: float = 0.39
    delta: int = 170
    min_span_size: int = 15
    max_extension: int = 32

    @classmethod
    def from_settings(cls, s: SpanSettings) -> SpanParams:
        """The parameters as the settings give them, in model tokens."""
        return cls(s.sigma, s.threshold, s.delta, s.min_span_size, s.max_extension)

    def per_row(self, pool: int) -> SpanParams:
        """The same parameters counted in stored rows when `pool` adjacent tokens share one row.

        Settings speak in model tokens; a pooled collection (storage_pool > 1) scores rows, so every
        length shrinks by the pool size and spans keep their length in text.
        """
        if pool <= 1:
            return self
        return SpanParams(
            sigma=self.sigma / pool,
            threshold=self.threshold,
            delta=self.delta // pool,
            min_span_size=max(1, math.ceil(self.min_span_size / pool)),
            max_extension=math.ceil(self.max_extension / pool),
        )


@dataclass
class TokenSpans:
    """Spans as token index ranges into the flat layout (inclusive ends)."""

    doc: torch.Tensor  # (S,) int64 document index
    start: torch.Tensor  # (S,) int64 flat token index
    end: torch.Tensor  # (S,) int64 flat token index, inclusive
    score: torch.Tensor  # (S,) float32


def gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter1d's kernel (truncate=4): radius int(4*sigma + 0.5), sums to 1."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).float()


@functools.lru_cache(maxsize=16)
def kernel_taps(sigma: float) -> tuple[float, ...]:
    """Host copy of the kernel's weights, built once per sigma: the per-query cost is then nil."""
    return tuple(gaussian_kernel(sigma, torch.device("cpu")).tolist())


def doc_index(doc_starts: torch.Tensor) -> torch.Tensor:
    """(N,) index of the document each flat token belongs to."""
    lengths = doc_starts[1:] - doc_starts[:-1]
    return torch.repeat_interleave(torch.arange(len(lengths), device=doc_starts.device), lengths)


def locate(doc_starts: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Document of each of a few flat token indices; cheaper than `doc_index` when there are few."""
    # right=True skips empty documents, whose start equals the next one's
    return torch.searchsorted(doc_starts, flat, right=True) - 1


def smooth(r: torch.Tensor, doc_starts: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-document Gaussian smoothing with "nearest" (edge-replicating) borders: (N,) -> (N,).

    One convolution over the flat signal as if it were a single document, then the <= 2*radius
    tokens at each end of every document, whose window crossed a document border, recomputed with
    clamped indices. Only B * 2 * radius tokens are gathered, not a padded copy of all N.
    """
    if sigma <= 0 or r.numel() == 0:
        return r.clone()
    taps_host = kernel_taps(float(sigma))  # (K,) host floats, K = 2 * rad + 1: reading taps off the device would sync
    w = torch.tensor(taps_host, device=r.device)
    rad = (len(taps_host) - 1) // 2
    x = r.float()
    # one extra zero at the end gives an (N + 1,)-long output whose last slot takes the edge
    # fix-ups of empty documents, which own no token: no host sync to filter them out
    padded = torch.nn.functional.pad(x, (rad, rad + 1))  # (N + 2 * rad + 1,)
    # one conv1d, not K shifted multiply-adds: the shifts are faster on an idle CPU, but each is a
    # parallel op with its own thread barrier, and on a busy machine K barriers cost far more than one
    out = torch.nn.functional.conv1d(padded.view(1, 1, -1), w.view(1, 1, -1)).view(-1)  # (N + 1,) symmetric w
    return fix_edges(out, x, doc_starts, sigma)


def fix_edges(out: torch.Tensor, x: torch.Tensor, doc_starts: torch.Tensor, sigma: float) -> torch.Tensor:
    """Turn a zero-padded flat convolution into per-document "nearest"-edge smoothing.

    `out` (N + 1,) holds the flat convolution of `x` (N,) with the kernel of `sigma` in its first N slots;
    the last slot is scratch for empty documents. Rewrites each document's first and last rad tokens in
    place and returns the (N,) view.
    """
    taps_host = kernel_taps(float(sigma))
    w = torch.tensor(taps_host, device=x.device)  # (K,) K = 2 * rad + 1
    rad = (len(taps_host) - 1) // 2
    n = x.numel()
    if rad == 0:  # a one-tap kernel never crosses a border
        return out[:n]
    lengths = doc_starts[1:] - doc_starts[:-1]  # (B,)
    first = doc_starts[:-1]  # (B,)
    last_local = (lengths - 1).clamp(min=0)[:, None]  # (B, 1)
    m = torch.arange(3 * rad, device=x.device)  # (3*rad,) rad outputs need rad + 2*rad inputs
    head = (m - rad)[None, :].expand(len(lengths), -1)  # (B, 3*rad) inputs of local outputs 0..rad-1
    tail = lengths[:, None] - 2 * rad + m  # (B, 3*rad) inputs of local outputs len-rad..len-1
    src = torch.minimum(torch.stack([head, tail], 1).clamp(min=0), last_local[:, :, None])  # (B, 2, 3*rad)
    # empty documents read token 0 (N == 0 is excluded by callers); only B * 2 * 3*rad values are gathered
    vals = x[(first[:, None, None] + src).clamp(max=n - 1)]  # (B, 2, 3*rad)
    fixed = vals.unfold(2, 2 * rad + 1, 1) @ w  # (B, 2, rad)
    j = torch.arange(rad, device=x.device)  # (rad,)
    pos = torch.stack([j[None, :].expand(len(lengths), -1), lengths[:, None] - rad + j], 1)  # (B, 2, rad) local
    # positions outside a short document (and all of an empty one) go to the spare slot
    ok = (pos >= 0) & (pos < lengths[:, None, None])
    dst = torch.where(ok, first[:, None, None] + pos, n)  # (B, 2, rad)
    out[dst.reshape(-1)] = fixed.reshape(-1)
    return out[:n]


def extract_spans(
    smoothed: torch.Tensor,
    doc_starts: torch.Tensor,
    ends_sentence: torch.Tensor,
    params: SpanParams,
    threshold: torch.Tensor | float | None = None,
) -> TokenSpans:
    """Spans over the flat smoothed relevance of several documents.

    Args:
        smoothed: (N,) smoothed relevance of all documents' tokens, end to end.
        doc_starts: (B+1,) where each document begins.
        ends_sentence: (N,) bool, tokens that end a sentence.
        params: lengths in rows.
        threshold: a scalar, or one per document (B,); None: `params.threshold`.

    Returns:
        The spans, ordered by position, overlaps merged.
    """
    dev = smoothed.device
    n = smoothed.numel()
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    if n == 0:
        return TokenSpans(empty, empty, empty, torch.zeros(0, device=dev))
    thr = params.threshold if threshold is None else threshold
    if isinstance(thr, torch.Tensor):  # per document: spread to tokens only in this (rarer) case
        thr = thr[doc_index(doc_starts)]
    kept = torch.nonzero(smoothed > thr).view(-1)  # (K,) sorted flat indices
    if kept.numel() == 0:
        return TokenSpans(empty, empty, empty, torch.zeros(0, device=dev))
    kdoc = locate(doc_starts, kept)  # (K,) no (N,) document index on the scalar-threshold path
    new = torch.ones_like(kept, dtype=torch.bool)
    new[1:] = (kdoc[1:] != kdoc[:-1]) | (kept[1:] - kept[:-1] > params.delta)
    label = torch.cumsum(new.long(), 0) - 1  # (K,) cluster of each kept token
    start = kept[new]  # (C,) the boolean index already waits for the device: no extra .item()
    c = start.numel()
    end = torch.full((c,), -1, dtype=torch.long, device=dev).scatter_reduce(0, label, kept, "amax")
    score = torch.full((c,), -math.inf, device=dev).scatter_reduce(0, label, smoothed[kept].float(), "amax")
    cdoc = kdoc[new]
    keep = (end - start + 1) >= params.min_span_size
    start, end, score, cdoc = start[keep], end[keep], score[keep], cdoc[keep]
    if start.numel() == 0:
        return TokenSpans(empty, empty, empty, torch.zeros(0, device=dev))
    start, end = extend_to_sentences(start, end, cdoc, doc_starts, ends_sentence, params.max_extension)
    return _merge_overlaps(cdoc, start, end, score)


def extend_to_sentences(
    start: torch.Tensor,
    end: torch.Tensor,
    cdoc: torch.Tensor,
    doc_starts: torch.Tensor,
    ends_sentence: torch.Tensor,
    max_ext: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move starts back to just after the previous sentence end, ends forward to the next, by <= max_ext."""
    n = ends_sentence.numel()
    first, last = doc_starts[cdoc], doc_starts[cdoc + 1] - 1
    if start.numel() * (max_ext + 1) > n:  # windows would outweigh one scan of the whole signal
        return extend_to_sentences_scan(start, end, first, last, ends_sentence, max_ext)
    # look only at the max_ext tokens around each of the S spans: (S, max_ext) reads, not (N,) scans
    back = start[:, None] - torch.arange(1, max_ext + 1, device=start.device)  # (S, M) start-1 .. start-M
    stop = (back < first[:, None]) | ends_sentence[back.clamp(min=0)]  # first stop: document start or sentence end
    steps = torch.where(stop.any(1), stop.int().argmax(1), max_ext) if max_ext else torch.zeros_like(start)
    fwd = end[:, None] + torch.arange(max_ext + 1, device=start.device)  # (S, M + 1) end .. end+M
    hit = (fwd <= last[:, None]) & ends_sentence[fwd.clamp(max=n - 1)]  # sentence end inside the document
    new_end = torch.where(hit.any(1), end + hit.int().argmax(1), torch.minimum(end + max_ext, last))
    return start - steps, new_end


def extend_to_sentences_scan(
    start: torch.Tensor,
    end: torch.Tensor,
    first: torch.Tensor,
    last: torch.Tensor,
    ends_sentence: torch.Tensor,
    max_ext: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`extend_to_sentences` by prefix scans over all N tokens: for many spans or a very long max_ext."""
    n = ends_sentence.numel()
    idx = torch.arange(n, device=start.device)
    neg = torch.full_like(idx, -1)
    big = torch.full_like(idx, n)
    prev_end = torch.cummax(torch.where(ends_sentence, idx, neg), 0).values  # last boundary at or before i
    next_end = torch.flip(torch.cummin(torch.flip(torch.where(ends_sentence, idx, big), [0]), 0).values, [0])
    before = prev_end[(start - 1).clamp(min=0)]
    before = torch.where(start > first, before, first - 1)  # nothing before a document's first token
    new_start = torch.maximum(torch.maximum(before + 1, start - max_ext), first)
    new_end = torch.minimum(torch.minimum(next_end[end], end + max_ext), last)
    return new_start, new_end


def _merge_overlaps(cdoc: torch.Tensor, start: torch.Tensor, end: torch.Tensor, score: torch.Tensor) -> TokenSpans:
    """Extension can make neighbouring clusters overlap: merge them, keeping the best score."""
    # clusters come ordered by flat position, and starts stay ordered after extension
    run_end = torch.cummax(end, 0).values
    new = torch.ones_like(start, dtype=torch.bool)
    new[1:] = (cdoc[1:] != cdoc[:-1]) | (start[1:] > run_end[:-1])
    label = torch.cumsum(new.long(), 0) - 1
    mstart = start[new]
    m = mstart.numel()
    dev = start.device
    mend = torch.full((m,), -1, dtype=torch.long, device=dev).scatter_reduce(0, label, end, "amax")
    mscore = torch.full((m,), -math.inf, device=dev).scatter_reduce(0, label, score, "amax")
    return TokenSpans(cdoc[new], mstart, mend, mscore)
