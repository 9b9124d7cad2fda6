"""The vectorised span engine against the straightforward reference, on random signals."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from retriever.boundaries import boundary_chars, token_ends_sentence
from retriever.spans import SpanParams, extract_spans, smooth
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


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("seed", range(6))
def test_engine_matches_reference(params: SpanParams, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rs, es = random_docs(rng, int(rng.integers(1, 8)))
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
