"""The int8 copy MaxSim ranking scans (`maxsim_int8`), and segments read by id.

A real Edge store: the copy is Qdrant's scalar quantization of the token rows, built when an ingest
ends (Edge runs its optimizers only when asked), searched with exact rescoring. What must hold: the
same segments in the same order as ranking over the stored rows, a copy that exists on disk once an
ingest has ended, a store that says whether it keeps one, and fetches by id that return what a
filter returned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import Match, TokenStore, Where, open_or_create_store, open_store
from schemas.errors import StorageFaultError
from schemas.settings import Settings
from tests.support import fake_embedded

DIM = 32


def _store(path: Path, int8: bool) -> TokenStore:
    s = Settings(store_path=path, segment_tokens=16, maxsim_int8=int8)
    store = open_or_create_store(s.store, "m", DIM, "mean")
    for i in range(30):  # 30 documents of 4 segments: the rescored 2 x k are a small share of them
        store.write_document(fake_embedded(f"d{i}", 60, DIM, seed=i, window=8))
    store.flush()
    return store


def _query(seed: int) -> np.ndarray:
    q = np.random.default_rng(1000 + seed).standard_normal((6, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i, topic in enumerate(["tides and the moon", "bread and yeast", "volcanoes and magma"]):
        (d / f"doc{i}.txt").write_text(f"This note is about {topic}. " * 40 + "It ends here.")
    return d


def _quantized_files(path: Path) -> list[Path]:
    return list(path.rglob("quantized.data"))


def test_int8_copy_ranks_segments_exactly_as_the_stored_rows(tmp_path: Path) -> None:
    plain, fast = _store(tmp_path / "plain", False), _store(tmp_path / "int8", True)
    try:
        assert not plain.build_rank_index() and not _quantized_files(tmp_path / "plain")
        assert fast.build_rank_index() and _quantized_files(tmp_path / "int8")
        assert fast.stats()["maxsim_int8"] is True and plain.stats()["maxsim_int8"] is False
        versions = {d: h.version for d, h in plain.headers().items()}
        assert len(versions) == 30
        for seed in range(8):
            a = plain.rank_segments(_query(seed), versions, 8)
            b = fast.rank_segments(_query(seed), versions, 8)
            assert [(d, i) for d, i, _ in a] == [(d, i) for d, i, _ in b] and len(a) == 8
            # rescored from the stored rows: the scores are MaxSim's own, not the int8 estimates
            assert np.allclose([x for *_, x in a], [x for *_, x in b], atol=1e-5)
    finally:
        plain.close()
        fast.close()


def test_an_ingest_builds_the_copy_and_reports_its_time(
    tmp_path: Path, corpus_dir: Path, minilm: HFTokenEmbedder
) -> None:
    s = Settings(store_path=tmp_path / "s", device="cpu")
    report = ingest([corpus_dir], s, embedder=minilm)
    assert report.documents > 0 and report.index_seconds > 0 and report.index_note is None
    assert _quantized_files(tmp_path / "s")
    again = ingest([corpus_dir], s, embedder=minilm)  # nothing new stored: no rewrite
    assert again.documents == 0 and again.index_seconds == 0


def test_a_copy_that_cannot_be_built_is_a_note_and_the_documents_stay(
    tmp_path: Path, corpus_dir: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: TokenStore) -> bool:
        raise StorageFaultError(f"compacting the store in {tmp_path} refused: it needs about 9 MiB free")

    monkeypatch.setattr(TokenStore, "build_rank_index", refuse)
    s = Settings(store_path=tmp_path / "s", device="cpu")
    report = ingest([corpus_dir], s, embedder=minilm)
    assert report.documents > 0 and report.index_note is not None
    assert "needs about 9 MiB free" in report.index_note and "chunkless compact" in report.index_note
    store = open_store(s.store)
    try:
        assert len(store.headers()) == report.documents
    finally:
        store.close()


def test_segments_read_by_id_are_those_a_filter_reads(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", True)
    try:
        versions = {d: h.version for d, h in store.headers().items()}
        wanted = {"d3": [2, 0], "d7": [1], "d9": [3, 9]}  # segment 9 of d9 does not exist
        got = store.fetch_segments({d: versions[d] for d in wanted}, wanted)
        assert {d: [s.index for s in segs] for d, segs in got.items()} == {"d3": [0, 2], "d7": [1], "d9": [3]}
        whole = store.fetch_segments({"d3": versions["d3"]})["d3"]
        for s in got["d3"]:
            assert np.array_equal(s.stored, whole[s.index].stored) and s.text == whole[s.index].text
        # a stale version names other points: nothing, as a filter on the version gave
        assert store.fetch_segments({"d3": "f" * 64}, {"d3": [0]}) == {}
        texts = store.segment_texts({("d3", versions["d3"]): [0, 2], ("d7", "f" * 64): [1]})
        assert sorted(texts) == [("d3", 0), ("d3", 2)] and texts["d3", 0][1] == whole[0].text
        seg = Where(must=[Match("kind", "segment"), Match("doc_id", "d3")])
        assert store.backend.count(seg) == 4
    finally:
        store.close()
