"""Answerability: the logistic calibration, the shipped parameters, confidence and abstention in the search path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from retriever import Retriever
from retriever.calibration import FEATURES, Calibration, abstention, fit
from retriever.evaluation.benchmark import load_benchmark
from retriever.evaluation.evaluate import auc, evaluate, index_benchmark
from schemas.settings import Settings
from tests.support import write_bench


def test_fit_recovers_a_separable_signal_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=400) > 0).astype(int)
    rows = [{"a": float(a), "b": float(b)} for a, b in x]
    model = fit(rows, y.tolist(), names=("a", "b"))
    conf = [model.confidence(r) for r in rows]
    assert all(c is not None and 0.0 < c < 1.0 for c in conf)
    assert model.weight[0] > 0 > model.weight[1]
    pos = [c for c, t in zip(conf, y, strict=True) if t and c is not None]
    neg = [c for c, t in zip(conf, y, strict=True) if not t and c is not None]
    assert auc(pos, neg) is not None and auc(pos, neg) > 0.9  # type: ignore[operator]
    # calibrated: the mean confidence is the base rate (logistic fit with an intercept)
    assert np.mean([c for c in conf if c is not None]) == pytest.approx(y.mean(), abs=0.02)
    again = Calibration.from_json(json.loads(json.dumps(model.to_json())))
    assert again.confidence(rows[0]) == pytest.approx(conf[0])
    assert model.confidence({"a": 1.0}) is None  # a missing feature gives no confidence


def test_packaged_parameters_load_and_name_the_features() -> None:
    model = Calibration.packaged()
    assert model is not None, "retriever/calibration.json should ship with the package"
    assert set(model.names) <= set(FEATURES)
    assert model.mean.shape == model.scale.shape == model.weight.shape == (len(model.names),)
    assert np.all(model.scale > 0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, minilm: HFTokenEmbedder) -> Path:
    root = tmp_path_factory.mktemp("calib")
    index_benchmark(
        load_benchmark(write_bench(root / "bench")), Settings(store_path=root / "store", device="cpu"), minilm
    )
    return root / "store"


def test_search_gives_a_confidence_and_abstains_below_the_setting(store: Path, minilm: HFTokenEmbedder) -> None:
    # the span method's own confidence (retriever/calibration.json): what a search gives without the reader
    s = Settings(store_path=store, device="cpu", rerank_k=4, reader_model="none")
    with Retriever(s, embedder=minilm) as r:
        on = r.search("What makes the dough rise?")
        off = r.search("Who won the football world cup in 1954?")
    assert on.confidence is not None and off.confidence is not None
    assert 0.0 <= off.confidence < on.confidence <= 1.0
    assert set(on.features) == set(FEATURES)
    assert "confidence" in on.model_dump()
    cut = (on.confidence + off.confidence) / 2
    with Retriever(s.updated(abstain=cut), embedder=minilm) as r:
        assert r.search("What makes the dough rise?").spans
        held = r.search("Who won the football world cup in 1954?")
    assert held.spans == [] and held.confidence == pytest.approx(off.confidence, abs=1e-6)


def test_one_pass_query_encoding_equals_the_embedder_and_int8_stays_close(minilm: HFTokenEmbedder) -> None:
    queries = ["What makes the dough rise?", "How many squares does a chess board have?"]
    enc = minilm.encode_queries(queries)
    for q, e in zip(queries, enc, strict=True):
        assert e.tokens is not None
        np.testing.assert_allclose(e.pooled, minilm.embed_query(q), atol=1e-5)
        np.testing.assert_allclose(e.tokens, minilm.embed_query_tokens(q), atol=1e-5)
    q8 = HFTokenEmbedder(Settings(device="cpu", query_int8=True))
    assert q8.query_int8
    for a, b in zip(enc, q8.encode_queries(queries), strict=True):
        assert b.tokens is not None and a.tokens is not None
        assert float(a.pooled @ b.pooled) > 0.9
        assert b.tokens.shape == a.tokens.shape
        assert not np.array_equal(a.pooled, b.pooled)  # the int8 copy ran, not the float model
    # documents and texts stay with the float model
    texts = ["Bread is made from flour."]
    np.testing.assert_array_equal(q8.embed_texts(texts), minilm.embed_texts(texts))


def test_abstention_precision_and_recall() -> None:
    a = abstention([0.9, 0.8, 0.2, None], [0.1, 0.3, 0.7], threshold=0.5)
    # abstained: answerable 0.2 and None, unanswerable 0.1 and 0.3
    assert a.precision == pytest.approx(2 / 4) and a.recall == pytest.approx(2 / 3)
    assert a.answered == pytest.approx(2 / 4)
    assert "precision 0.500" in a.line()
    assert abstention([], [], 0.5).precision is None


def test_eval_reports_confidence_auc_and_abstention(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    bench = load_benchmark(write_bench(tmp_path / "bench"))
    report = evaluate(bench, Settings(device="cpu", rerank_k=4, abstain=0.2), embedder=minilm, baselines=False)
    assert report.confidence_auc is not None and 0.0 <= report.confidence_auc <= 1.0
    assert report.abstention is not None and report.abstention.threshold == 0.2
    assert report.abstention.recall in (0.0, 1.0)  # one unanswerable question: abstained on or not
    assert "AUC of the top span's confidence" in report.table() and "abstain below 0.20" in report.table()
