"""The vectorised span engine against the straightforward reference, on random signals."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from indexer.boundaries import boundary_chars, token_ends_sentence
from retriever.relevance import gemv_blocks, relevance_smoothed
from retriever.spans import SpanParams, extend_to_sentences, extend_to_sentences_scan, extract_spans, smooth
from tests.reference_spans import reference_spans

PARAMS = [
    SpanParams(4.0, 0.39, 170, 15, 32),  # the published method
    SpanParams(2.0, 0.30, 1, 3, 8),
    SpanParams(0.0, 0.45, 5, 1, 0),
    SpanParams(1.3, 0.35, 20, 4, 100),
]


def random_docs(rng: np.random.Generator, n_docs: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rs, es = [], []
    for _ in range(n_docs):
        n = int(rng.integers(1, 400))
        base = rng.normal(0.3, 0.08, n)
        for _ in range(int(rng.integers(0, 4))):  # a few bumps that cross the thresholds
            c, w = rng.integers(0, n), rng.integers(2, 40)
            base[max(0, c - w) : c + w] += rng.uniform(0.05, 0.25)
        rs.append(base.astype(np.float32))
        es.append(rng.random(n) < 0.05)
    return rs, es


def assert_matches_reference(rs: list[np.ndarray], es: list[np.ndarray], params: SpanParams) -> None:
    """Engine over all documents laid flat == reference per document: smoothed signal and spans."""
    doc_starts = torch.tensor(np.cumsum([0] + [len(r) for r in rs]))
    flat = torch.from_numpy(np.concatenate(rs))
    s = smooth(flat, doc_starts, params.sigma)
    got = extract_spans(s, doc_starts, torch.from_numpy(np.concatenate(es)), params)
    want = []
    for d, (r, e) in enumerate(zip(rs, es, strict=True)):
        ref_s, spans = reference_spans(
            r, e, params.sigma, params.threshold, params.delta, params.min_span_size, params.max_extension
        )
        off = int(doc_starts[d])
        np.testing.assert_allclose(s[off : off + len(r)].numpy(), ref_s, atol=1e-5)
        want += [(d, a + off, b + off, sc) for a, b, sc in spans]
    have = list(zip(got.doc.tolist(), got.start.tolist(), got.end.tolist(), got.score.tolist(), strict=True))
    assert [h[:3] for h in have] == [w[:3] for w in want]
    np.testing.assert_allclose([h[3] for h in have], [w[3] for w in want], atol=1e-5)


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("seed", range(6))
def test_engine_matches_reference(params: SpanParams, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rs, es = random_docs(rng, int(rng.integers(1, 8)))
    assert_matches_reference(rs, es, params)


@pytest.mark.parametrize("params", PARAMS)
def test_many_short_and_one_token_documents(params: SpanParams) -> None:
    """Documents shorter than the kernel radius (1 token included), many at once."""
    rng = np.random.default_rng(7)
    lengths = [1, 1, 2, 3, 1, *rng.integers(1, 60, 300).tolist(), 1]
    rs = [rng.normal(0.4, 0.1, n).astype(np.float32) for n in lengths]
    es = [rng.random(n) < 0.2 for n in lengths]
    assert_matches_reference(rs, es, params)


@pytest.mark.parametrize("params", PARAMS)
def test_every_token_above_threshold(params: SpanParams) -> None:
    rng = np.random.default_rng(8)
    rs = [rng.uniform(0.6, 0.9, n).astype(np.float32) for n in (5, 700, 40)]
    es = [rng.random(len(r)) < 0.03 for r in rs]
    assert_matches_reference(rs, es, params)


def test_long_documents_many_spans_use_both_extension_paths() -> None:
    """Few spans take the windowed extension, many spans the prefix scans: both match the reference."""
    rng = np.random.default_rng(9)
    rs, es = random_docs(rng, 40)
    for params in (SpanParams(1.0, 0.3, 2, 1, 3), SpanParams(1.0, 0.3, 2, 1, 200)):
        assert_matches_reference(rs, es, params)


def test_extension_paths_agree() -> None:
    rng = np.random.default_rng(10)
    doc_starts = torch.tensor([0, 50, 51, 300, 1000])
    ends = torch.from_numpy(rng.random(1000) < 0.05)
    start = torch.tensor([0, 20, 50, 51, 60, 299, 400, 999])
    end = torch.tensor([10, 49, 50, 55, 90, 299, 600, 999])
    cdoc = torch.searchsorted(doc_starts, start, right=True) - 1
    first, last = doc_starts[cdoc], doc_starts[cdoc + 1] - 1
    for m in (0, 1, 7, 40):
        win = extend_to_sentences(start, end, cdoc, doc_starts, ends, m)
        scan = extend_to_sentences_scan(start, end, first, last, ends, m)
        assert torch.equal(win[0], scan[0]) and torch.equal(win[1], scan[1]), m


def test_empty_documents_are_skipped_by_smoothing() -> None:
    """An empty document owns no token and changes nothing around it."""
    r = torch.rand(30)
    with_empty = smooth(r, torch.tensor([0, 0, 10, 10, 30, 30]), 3.0)
    without = smooth(r, torch.tensor([0, 10, 30]), 3.0)
    torch.testing.assert_close(with_empty, without)


def test_per_document_threshold() -> None:
    r = torch.tensor([0.5] * 20 + [0.5] * 20)
    starts = torch.tensor([0, 20, 40])
    got = extract_spans(
        r, starts, torch.zeros(40, dtype=torch.bool), SpanParams(0, 0, 5, 1, 0), torch.tensor([0.4, 0.6])
    )
    assert got.doc.tolist() == [0] and (got.start.item(), got.end.item()) == (0, 19)


def test_sentence_rule_keeps_abbreviations_and_decimals() -> None:
    text = "Dr. Smith paid $3.50 in the U.S. last year. Then he left.\nNew line"
    ends = np.nonzero(boundary_chars(text, "sentences"))[0].tolist()
    assert [text[i] for i in ends] == [".", ".", "\n"]
    assert ends[0] == text.index("year.") + 4
    seps = np.nonzero(boundary_chars(text, "separators"))[0]
    assert len(seps) == 7  # the naive rule breaks on every dot and the newline
    words = list(re.finditer(r"\S+", text))
    flags = token_ends_sentence(text, np.array([w.start() for w in words]), "sentences")
    assert [w.group() for w, f in zip(words, flags, strict=True) if f] == ["year.", "left."]


def test_pooled_rows_keep_span_lengths_in_tokens() -> None:
    p = SpanParams(4.0, 0.39, 170, 15, 32)
    assert p.per_row(1) is p
    two = p.per_row(2)
    assert (two.sigma, two.delta, two.min_span_size, two.max_extension, two.threshold) == (2.0, 85, 8, 16, 0.39)
    assert p.per_row(4).min_span_size == 4 and p.per_row(32).min_span_size == 1


@pytest.mark.parametrize("sigma", [4.0, 1.3, 0.1])  # 0.1: a one-tap kernel
def test_fused_cpu_relevance_and_smoothing_match_torch(sigma: float) -> None:
    """The CPU fast path (BLAS GEMV and convolution per worker range) == torch GEMV then `smooth`."""
    rng = np.random.default_rng(7)
    lengths = [0, 1, 5, 40, 0, 333, 1000, 17, 2, 600]
    blocks = [torch.from_numpy(rng.normal(size=(n, 8)).astype(np.float32)) for n in lengths]
    q = torch.from_numpy(rng.normal(size=8).astype(np.float32))
    doc_starts = torch.tensor(np.cumsum([0, *lengths]))
    # tiny chunks and no size floor, so ranges, chunk seams and halos cross document and block borders
    r, s = relevance_smoothed(blocks, q, doc_starts, sigma, min_split_rows=0, chunk_rows=37)
    want_r = torch.cat([torch.mv(b, q) if len(b) else torch.zeros(0) for b in blocks])
    np.testing.assert_allclose(r.numpy(), want_r.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.numpy(), smooth(want_r, doc_starts, sigma).numpy(), rtol=1e-5, atol=1e-5)
    for floor in (0, 10**9):  # the split BLAS path and the torch path
        got = gemv_blocks(blocks, q, min_split_rows=floor).numpy()
        np.testing.assert_allclose(got, want_r.numpy(), rtol=1e-5, atol=1e-5)
