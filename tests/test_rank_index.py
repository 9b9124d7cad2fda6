"""Ranking rows (`rank_pool`): MaxSim over pooled int8 rows first, then exactly; and segments read by id.

A real Edge store. Ranking rows are the token rows mean-pooled `rank_pool` at a time, kept with
Qdrant's int8 copy, which is built when an ingest ends (Edge runs its optimizers only when asked);
`rank_segments` asks MaxSim over them for candidates and MaxSim over the stored rows for the ranking.
What must hold: the same segments in the same order, with the same scores, as MaxSim over every
stored row, a copy that exists once an ingest has ended, a setting a collection keeps, and fetches by
id that return what a filter returned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import Match, TokenStore, Where, open_or_create_store, open_store
from indexer.store.ranking import candidates, ranking_rows
from schemas.errors import StorageFaultError, StoreMismatchError
from schemas.settings import Settings
from tests.support import fake_embedded

DIM = 32
DOCS = 100  # 400 segments: more than the first stage passes on, so it really chooses


def _queries() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(6):
        q = rng.standard_normal((5, DIM)).astype(np.float32)
        out.append(q / np.linalg.norm(q, axis=1, keepdims=True))
    return out


def _store(path: Path, pool: int, server: bool = False) -> TokenStore:
    """DOCS random documents; some segments hold tokens near the queries' tokens, as answers do."""
    where: dict[str, object] = {"url": f"local:{path}"} if server else {"store_path": path}
    s = Settings(**where, segment_tokens=16, rank_pool=pool, storage_dtype="float32")
    store = open_or_create_store(s.store, "m", DIM, "mean")
    rng = np.random.default_rng(3)
    queries = _queries()
    for i in range(DOCS):
        emb = fake_embedded(f"d{i}", 60, DIM, seed=i, window=8)
        if i % 7 == 0:  # a near copy of a few of one query's tokens, at different depths
            q = queries[i % len(queries)]
            for j, row in enumerate(rng.choice(60, size=3, replace=False)):
                v = q[j] + 0.6 * rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
                emb.vectors[row] = v / np.linalg.norm(v)
        store.write_document(emb)
    store.flush()
    return store


def _rank_files(path: Path) -> list[Path]:
    return list(path.rglob("vector_storage-rank/quantized.data"))


def test_ranking_rows_rank_segments_exactly_as_the_stored_rows(tmp_path: Path) -> None:
    plain, fast = _store(tmp_path / "plain", 0), _store(tmp_path / "pool", 3)
    try:
        assert not plain.build_rank_index() and not list((tmp_path / "plain").rglob("vector_storage-rank"))
        assert fast.build_rank_index() and _rank_files(tmp_path / "pool")
        assert fast.stats()["rank_pool"] == 3 and plain.stats()["rank_pool"] == 0
        versions = {d: h.version for d, h in plain.headers().items()}
        segments = plain.backend.count(Where(must=[Match("kind", "segment")]))
        assert segments > 2 * candidates(8)  # the first stage runs, and leaves segments out
        for q in _queries():
            exact = {(d, i): x for d, i, x in plain.rank_segments(q, versions, segments)}
            a = plain.rank_segments(q, versions, 8)
            b = fast.rank_segments(q, versions, 8)
            # the segments holding the query's tokens come first, in the same order (beyond them random
            # segments tie closely, and pooled rows are a rougher guide there than on real text)
            assert [(d, i) for d, i, _ in a][:3] == [(d, i) for d, i, _ in b][:3] and len(b) == 8
            # scored from the stored rows: MaxSim's own scores, not the int8 ranking rows' estimates
            assert np.allclose([x for *_, x in b], [exact[d, i] for d, i, _ in b], atol=1e-5)
            assert [x for *_, x in b] == sorted((x for *_, x in b), reverse=True)
    finally:
        plain.close()
        fast.close()


def test_ranking_rows_are_unit_means_of_consecutive_rows() -> None:
    rows = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    got = ranking_rows(rows, 3)
    assert got.shape == (4, 4) and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    for g, lo in zip(got, range(0, 10, 3), strict=True):
        m = rows[lo : lo + 3].sum(0)
        assert np.allclose(g, m / np.linalg.norm(m), atol=1e-6)


def test_a_collection_keeps_its_rank_pool(tmp_path: Path) -> None:
    _store(tmp_path / "s", 3).close()
    s = Settings(store_path=tmp_path / "s", segment_tokens=16, storage_dtype="float32")
    open_or_create_store(s.store, "m", DIM, "mean").close()  # unset: the collection's own
    with pytest.raises(StoreMismatchError, match=r"created with rank_pool 3.*CHUNKLESS_RANK_POOL"):
        open_or_create_store(Settings(store_path=tmp_path / "s", rank_pool=0).store, "m", DIM, "mean")
    # a layout of codes is never ranked by MaxSim in Qdrant: no ranking rows whatever the setting
    binary = open_or_create_store(Settings(store_path=tmp_path / "b", storage_dtype="binary").store, "m", DIM, "mean")
    try:
        assert binary.stats()["rank_pool"] == 0
    finally:
        binary.close()


def test_the_server_backend_ranks_with_its_ranking_rows_as_edge_does(tmp_path: Path) -> None:
    """qdrant-client's local mode (the server path a test reaches): the same two-stage query, its answers."""
    edge, server = _store(tmp_path / "edge", 3), _store(tmp_path / "server", 3, server=True)
    try:
        assert server.stats()["rank_pool"] == 3
        versions = {d: h.version for d, h in edge.headers().items()}
        for q in _queries():
            e, s = edge.rank_segments(q, versions, 8), server.rank_segments(q, versions, 8)
            assert [(d, i) for d, i, _ in e][:3] == [(d, i) for d, i, _ in s][:3]
            assert np.allclose([x for *_, x in e][:3], [x for *_, x in s][:3], atol=1e-4)
    finally:
        edge.close()
        server.close()


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i, topic in enumerate(["tides and the moon", "bread and yeast", "volcanoes and magma"]):
        (d / f"doc{i}.txt").write_text(f"This note is about {topic}. " * 40 + "It ends here.")
    return d


def test_an_ingest_builds_the_copy_and_reports_its_time(
    tmp_path: Path, corpus_dir: Path, minilm: HFTokenEmbedder
) -> None:
    s = Settings(store_path=tmp_path / "s", device="cpu")
    report = ingest([corpus_dir], s, embedder=minilm)
    assert report.documents > 0 and report.index_seconds > 0 and report.index_note is None
    assert _rank_files(tmp_path / "s")
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
    store = _store(tmp_path / "s", 3)
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
        assert store.backend.count(Where(must=[Match("kind", "segment"), Match("doc_id", "d3")])) == 4
    finally:
        store.close()


def test_an_open_reads_the_int8_copy_ahead_in_the_background(tmp_path: Path) -> None:
    """Every ranking query scans the int8 copy whole; Edge's close dropped it from the page cache."""
    from indexer.store.edge import warm_scanned_copies

    store = _store(tmp_path / "pool", 3)
    plain = _store(tmp_path / "plain", 0)
    try:
        assert store.build_rank_index()
        shard = tmp_path / "pool" / "chunkless" / "shard"
        thread = warm_scanned_copies(shard, store.backend.quantized)
        assert thread is not None  # it found the copy where Edge keeps it
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert warm_scanned_copies(shard, set()) is None
        assert plain.backend.quantized == set()
        assert warm_scanned_copies(tmp_path / "plain" / "chunkless" / "shard", {"rank"}) is None
    finally:
        store.close()
        plain.close()
