"""Spans from per-token relevance, for many documents at once, with no Python loop over tokens.

All documents of a query are laid end to end in one flat tensor (N tokens); `doc_starts` (B+1,)
marks where each begins. Steps (DEVELOPERS.md step 4): Gaussian smoothing with "nearest" edges per
document, threshold, cluster kept tokens whose gaps are <= delta, drop clusters shorter than
min_span_size, extend to the nearest sentence end within max_extension tokens, merge overlaps,
score each span by its smoothed maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from schemas.settings import Settings


@dataclass(frozen=True)
class SpanParams:
    sigma: float = 4.0
    threshold: float = 0.39
    delta: int = 170
    min_span_size: int = 15
    max_extension: int = 32

    @classmethod
    def from_settings(cls, s: Settings) -> SpanParams:
        return cls(s.sigma, s.threshold, s.delta, s.min_span_size, s.max_extension)


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


def doc_index(doc_starts: torch.Tensor) -> torch.Tensor:
    """(N,) index of the document each flat token belongs to."""
    lengths = doc_starts[1:] - doc_starts[:-1]
    return torch.repeat_interleave(torch.arange(len(lengths), device=doc_starts.device), lengths)


def smooth(r: torch.Tensor, doc_starts: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-document Gaussian smoothing with "nearest" (edge-replicating) borders, in one conv1d."""
    if sigma <= 0 or r.numel() == 0:
        return r.clone()
    w = gaussian_kernel(sigma, r.device)
    rad = (len(w) - 1) // 2
    lengths = doc_starts[1:] - doc_starts[:-1]  # (B,)
    padded_len = lengths + 2 * rad
    pdoc = torch.repeat_interleave(torch.arange(len(lengths), device=r.device), padded_len)
    pstart = torch.cumsum(padded_len, 0) - padded_len  # (B,) where each padded doc begins
    local = torch.arange(len(pdoc), device=r.device) - pstart[pdoc] - rad  # position within its doc
    src = doc_starts[pdoc] + local.clamp(min=torch.zeros_like(local), max=lengths[pdoc] - 1)
    padded = r[src].float()  # each doc framed by rad copies of its edge values
    out = torch.nn.functional.conv1d(padded.view(1, 1, -1), w.flip(0).view(1, 1, -1)).view(-1)
    # output j is centred on padded j + rad; doc token t of doc d sits at padded pstart[d] + rad + t
    tok_doc = doc_index(doc_starts)
    t = torch.arange(r.numel(), device=r.device) - doc_starts[tok_doc]
    return out[pstart[tok_doc] + t]


def extract_spans(
    smoothed: torch.Tensor,
    doc_starts: torch.Tensor,
    ends_sentence: torch.Tensor,
    params: SpanParams,
    threshold: torch.Tensor | float | None = None,
) -> TokenSpans:
    """Spans over the flat smoothed relevance; `threshold` may be per document (B,) or scalar."""
    dev = smoothed.device
    n = smoothed.numel()
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    if n == 0:
        return TokenSpans(empty, empty, empty, torch.zeros(0, device=dev))
    tdoc = doc_index(doc_starts)
    thr = params.threshold if threshold is None else threshold
    thr_tok = thr[tdoc] if isinstance(thr, torch.Tensor) else thr
    kept = torch.nonzero(smoothed > thr_tok).view(-1)  # (K,) sorted flat indices
    if kept.numel() == 0:
        return TokenSpans(empty, empty, empty, torch.zeros(0, device=dev))
    kdoc = tdoc[kept]
    new = torch.ones_like(kept, dtype=torch.bool)
    new[1:] = (kdoc[1:] != kdoc[:-1]) | (kept[1:] - kept[:-1] > params.delta)
    label = torch.cumsum(new.long(), 0) - 1  # (K,) cluster of each kept token
    c = int(label[-1].item()) + 1
    start = kept[new]
    end = torch.full((c,), -1, dtype=torch.long, device=dev).scatter_reduce(0, label, kept, "amax")
    score = torch.full((c,), -math.inf, device=dev).scatter_reduce(0, label, smoothed[kept].float(), "amax")
    cdoc = kdoc[new]
    keep = (end - start + 1) >= params.min_span_size
    start, end, score, cdoc = start[keep], end[keep], score[keep], cdoc[keep]
    if start.numel() == 0:
        return TokenSpans(empty, empty, empty, torch.zeros(0, device=dev))
    start, end = _extend(start, end, cdoc, doc_starts, ends_sentence, params.max_extension)
    return _merge_overlaps(cdoc, start, end, score)


def _extend(
    start: torch.Tensor,
    end: torch.Tensor,
    cdoc: torch.Tensor,
    doc_starts: torch.Tensor,
    ends_sentence: torch.Tensor,
    max_ext: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move starts back to just after the previous sentence end, ends forward to the next, by <= max_ext."""
    n = ends_sentence.numel()
    idx = torch.arange(n, device=start.device)
    neg = torch.full_like(idx, -1)
    big = torch.full_like(idx, n)
    prev_end = torch.cummax(torch.where(ends_sentence, idx, neg), 0).values  # last boundary at or before i
    next_end = torch.flip(torch.cummin(torch.flip(torch.where(ends_sentence, idx, big), [0]), 0).values, [0])
    first, last = doc_starts[cdoc], doc_starts[cdoc + 1] - 1
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
    m = int(label[-1].item()) + 1
    dev = start.device
    mend = torch.full((m,), -1, dtype=torch.long, device=dev).scatter_reduce(0, label, end, "amax")
    mscore = torch.full((m,), -math.inf, device=dev).scatter_reduce(0, label, score, "amax")
    return TokenSpans(cdoc[new], start[new], mend, mscore)
