"""Sentence sums stored with each segment (`store_sentence_sums`): what is stored, and that the sentence
method scores from them, without reading token rows, exactly as it scores from the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import TokenStore, open_store
from indexer.store.sentence_sums import piece_starts, read_sums, segment_payload
from retriever import Retriever
from retriever.fetch import Fetcher
from retriever.methods import ThresholdMethod
from retriever.sentence_table import SentenceTables, doc_sentences
from schemas.errors import StoreMismatchError
from schemas.settings import Settings
from tests.test_sentence_vectors import DOCS, QUERIES, _corpus, _spans


def _settings(tmp_path: Path, name: str, **over: object) -> Settings:
    # small segments: most sentences run across a segment's edge, the case pieces exist for
    return Settings(store_path=tmp_path / name, device="cpu", segment_tokens=24, **over)


@pytest.fixture
def stores(tmp_path: Path, minilm: HFTokenEmbedder) -> tuple[Settings, Settings]:
    corpus = _corpus(tmp_path / "corpus")
    on, off = _settings(tmp_path, "on"), _settings(tmp_path, "off", store_sentence_sums=False)
    for s in (on, off):
        report = ingest([corpus], s, embedder=minilm, id_from=corpus)
        assert report.documents == len(DOCS) and not report.failures
    return on, off


def test_pieces_are_cut_at_sentence_ends_and_at_the_segment_end() -> None:
    text = "One two. Three four five. Six"
    starts = np.array([0, 4, 9, 15, 20, 26])  # the last row's sentence runs on into the next segment
    assert piece_starts(text, starts, "sentences").tolist() == [0, 2, 5]
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    payload = segment_payload(rows, text, starts, "sentences")
    sums = read_sums(payload, 2, "sentences")
    assert sums is not None
    np.testing.assert_array_equal(sums, [rows[0:2].sum(0), rows[2:5].sum(0), rows[5:6].sum(0)])
    # cut by another rule, they are not this reader's sentences: it reads the rows instead
    assert read_sums(payload, 2, "separators") is None
    assert read_sums({}, 2, "sentences") is None


def test_collection_records_the_rule_and_refuses_asking_otherwise(
    stores: tuple[Settings, Settings], minilm: HFTokenEmbedder, tmp_path: Path
) -> None:
    on, off = stores
    s_on, s_off = open_store(on.store), open_store(off.store)
    try:
        assert s_on.meta.sentence_sums == "sentences" and s_off.meta.sentence_sums is None
        assert s_on.stats()["sentence_sums"] == "sentences"
    finally:
        s_on.close()
        s_off.close()
    extra = _corpus(tmp_path / "extra", {"tea.txt": "Green tea is made from leaves that are not oxidised."})
    for settings, asked in ((off, True), (on, False)):
        with pytest.raises(StoreMismatchError, match=f"store_sentence_sums.*={asked}.*new collection"):
            ingest([extra], settings.updated(store_sentence_sums=asked), embedder=minilm, id_from=extra)


def _whole(store: TokenStore, settings: Settings, rows: bool) -> list:
    fetcher = Fetcher(store, torch.device("cpu"), settings.spans.boundary, 1 << 26)
    return fetcher.fetch(store.headers(), rows=rows)


def test_sums_read_give_the_sentences_and_norms_rows_give(stores: tuple[Settings, Settings]) -> None:
    on, _ = stores
    store = open_store(on.store)
    try:
        by_rows = {d.doc_id: d for d in _whole(store, on, rows=True)}
        by_sums = {d.doc_id: d for d in _whole(store, on, rows=False)}
        assert max(h.n_segments for h in store.headers().values()) > 2
        for doc_id, d in by_sums.items():
            assert d.by_sums and d.parts == [] and not by_rows[doc_id].by_sums
            with pytest.raises(ValueError, match="sentence sums"):
                _ = d.vectors
            want, got = doc_sentences(by_rows[doc_id]), doc_sentences(d)
            assert torch.equal(want.start, got.start) and torch.equal(want.end, got.end)
            assert torch.allclose(want.norm, got.norm, rtol=1e-5)
            # each sentence's sum is its pieces' sum, pieces joined across segment edges
            rows = by_rows[doc_id].vectors
            assert got.piece_sid is not None and d.sums is not None
            sums = torch.zeros(len(got.start), rows.shape[1]).index_add_(0, got.piece_sid, d.sums)
            assert torch.allclose(sums, torch.zeros_like(sums).index_add_(0, want.sid, rows), atol=1e-5)
            assert len(d.sums) > len(got.start)  # some sentence did cross an edge
    finally:
        store.close()


@pytest.mark.parametrize("fetch_segments", [0, 2])
def test_search_scores_from_sums_as_from_rows(
    stores: tuple[Settings, Settings], minilm: HFTokenEmbedder, fetch_segments: int
) -> None:
    on, off = (s.updated(fetch_segments=fetch_segments) for s in stores)
    with Retriever(on, embedder=minilm) as r_on, Retriever(off, embedder=minilm) as r_off:
        assert r_on.method.scores_from_sentence_sums and r_on.fetcher.has_sums and not r_off.fetcher.has_sums
        got, want = _spans(r_on), _spans(r_off)
        # what search fetched and cached: sums only, no rows
        cached = list(r_on.fetcher.cache._items.values())
        assert cached and all(s.vectors is None and s.sums is not None for s in cached)
        assert all(s.vectors is not None for s in r_off.fetcher.cache._items.values())
        # a cold search reads them again and gives the same
        r_on.clear_caches()
        assert _spans(r_on) == got
    for g, w in zip(got, want, strict=True):
        assert [x[:3] for x in g] == [x[:3] for x in w]
        assert [x[3] for x in g] == pytest.approx([x[3] for x in w], abs=1e-5)


def test_another_rule_or_method_reads_rows(stores: tuple[Settings, Settings], minilm: HFTokenEmbedder) -> None:
    on, off = stores
    # searching by another sentence rule than the sums were cut by: the rows, as a collection without sums
    sep_on, sep_off = on.updated(boundary="separators"), off.updated(boundary="separators")
    with Retriever(sep_on, embedder=minilm) as r_on, Retriever(sep_off, embedder=minilm) as r_off:
        assert not r_on.fetcher.has_sums
        assert _spans(r_on) == _spans(r_off)
        assert all(s.vectors is not None for s in r_on.fetcher.cache._items.values())
    # the threshold method reads every row's relevance
    with Retriever(on, embedder=minilm, span_method=ThresholdMethod) as r:
        assert not r.method.scores_from_sentence_sums
        assert r.search(QUERIES[0]).spans
    # explain reads rows through the same fetcher whose cache holds sums-only segments
    with Retriever(on, embedder=minilm) as r:
        r.search(QUERIES[0])
        assert r.explain(QUERIES[0], "rivers.txt").spans
        assert _spans(r)  # rows cached over sums: search still scores by sums
        assert all(d.by_sums for d in r.fetcher.fetch(r.store.headers(), rows=False))


def test_tables_of_rows_and_of_sums_are_cached_apart(stores: tuple[Settings, Settings]) -> None:
    on, _ = stores
    store = open_store(on.store)
    try:
        tables = SentenceTables()
        rows, sums = _whole(store, on, rows=True), _whole(store, on, rows=False)
        assert tables.table(rows, torch.device("cpu")).pieces is None
        t = tables.table(sums, torch.device("cpu"))
        assert t.pieces is not None and t.piece_sid is not None and len(t.pieces) == len(t.piece_sid)
        with pytest.raises(ValueError, match="some by their rows, some by their sentence sums"):
            tables.table([rows[0], sums[1]], torch.device("cpu"))
    finally:
        store.close()


def test_server_backend_stores_the_same_sums(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = _corpus(tmp_path / "corpus")
    edge = _settings(tmp_path, "edge")
    server = Settings(url=f"local:{tmp_path / 'qdrant'}", device="cpu", segment_tokens=24)
    got = []
    for s in (edge, server):
        ingest([corpus], s, embedder=minilm, id_from=corpus)
        store = open_store(s.store)
        try:
            got.append({(d.doc_id, d.first_segment): d.sums for d in _whole(store, s, rows=False)})
        finally:
            store.close()
    assert got[0].keys() == got[1].keys()
    assert all(torch.allclose(got[0][k], got[1][k], atol=2e-3) for k in got[0])
