"""Backend parity: the same writes and reads against Edge and the server backend, answers compared.

In the spirit of qdrant-client's congruence tests: every scenario writes the same documents through
`TokenStore` into a real Qdrant Edge store and into the server backend (qdrant-client local mode, the
only Qdrant "server" a test can reach), then asks both the same questions and compares the answers:
headers, counts, recall order at document and segment level, rank_segments, MaxSim, fetch_segments
rows and offsets (float32 and quantized layouts), delete and the orphan sweep, and filters with
must/should/must_not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.store import EdgeBackend, Match, NewPoint, TokenStore, Where, open_or_create_store, open_store
from indexer.store.segments import segment_id
from indexer.store.server import ServerBackend
from schemas.errors import StoreNotFoundError
from schemas.settings import Settings
from tests.support import fake_embedded

DIM = 16
V1, V2 = "1" * 64, "2" * 64


def _settings(tmp_path: Path, kind: str, **over: object) -> Settings:
    if kind == "edge":
        return Settings(store_path=tmp_path / "edge", segment_tokens=16, **over)
    return Settings(url=f"local:{tmp_path / 'qdrant'}", segment_tokens=16, **over)


def _write(store: TokenStore) -> None:
    """The same history on every backend: three documents, one replaced, one deleted, one orphan."""
    store.write_document(fake_embedded("a", 60, DIM, seed=1, version=V1, window=8))  # 4 segments of 16 rows or fewer
    store.write_document(fake_embedded("b", 20, DIM, seed=2, version=V1, window=8))
    store.write_document(fake_embedded("c", 30, DIM, seed=3, version=V1, window=8))
    store.write_document(fake_embedded("d", 10, DIM, seed=4, version=V1, window=8))
    store.write_document(fake_embedded("b", 40, DIM, seed=5, version=V2, window=8))  # replaced: old segments dropped
    assert store.delete_document("d") and not store.delete_document("d")
    # a write killed between its segments and its header: an orphan both must hide, then sweep
    half = fake_embedded("c", 12, DIM, seed=6, version=V2, window=8)
    stored, _ = store.codec.encode(half.vectors)
    store.backend.upsert(
        [
            NewPoint(
                segment_id("c", V2, 0),
                {"tokens": stored, "pooled": half.pooled},
                {"kind": "segment", "doc_id": "c", "version": V2, "seg": 0, "written_at": time.time()},
            )
        ]
    )


def _query(seed: int, rows: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    q = rng.standard_normal((rows or 1, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q if rows else q[0]


@pytest.fixture(params=["float32", "int8", "binary"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TokenStore, TokenStore]]:
    """An Edge store and a server-backend store holding the same history, in one storage layout."""
    stores = []
    for kind in ("edge", "server"):
        s = _settings(tmp_path, kind, storage_dtype=request.param)
        store = open_or_create_store(s.store, "m", DIM, "mean")
        _write(store)
        store.close()
        stores.append(open_store(s.store))  # answers come from what was persisted, not from memory
    assert isinstance(stores[0].backend, EdgeBackend) and isinstance(stores[1].backend, ServerBackend)
    yield stores[0], stores[1]
    for st in stores:
        st.close()


def _ids(recs: list) -> list[str]:
    return [c.doc_id for c in recs]


def test_headers_and_counts_agree(pair: tuple[TokenStore, TokenStore]) -> None:
    edge, server = pair
    he, hs = edge.headers(), server.headers()
    assert set(he) == set(hs) == {"a", "b", "c"}
    for d in he:  # everything but the wall-clock write time
        assert he[d].model_dump(exclude={"ingested_at"}) == hs[d].model_dump(exclude={"ingested_at"})
    assert he["b"].version == V2 and he["a"].n_segments == 4
    assert edge.header("a") == he["a"] and server.header("zzz") is None and edge.header("d") is None
    segments = Where(must=[Match("kind", "segment")])
    assert edge.backend.count(segments) == server.backend.count(segments) == 4 + 3 + 2 + 1  # orphan included
    es, ss = edge.stats(), server.stats()
    assert {k: es[k] for k in ("documents", "segments", "tokens", "storage_layout")} == {
        k: ss[k] for k in ("documents", "segments", "tokens", "storage_layout")
    }


def test_orphan_hidden_then_swept_alike(pair: tuple[TokenStore, TokenStore]) -> None:
    edge, server = pair
    q = fake_embedded("c", 12, DIM, seed=6, version=V2, window=8).pooled  # nearest to the orphan itself
    for store in pair:
        got = store.recall(q, 5, level="segment")
        assert all(c.header.version == V1 for c in got if c.doc_id == "c")  # never the orphan's version
        assert store.remove_orphans(min_age_s=3600) == 0  # young: maybe another writer's document in flight
        assert store.remove_orphans() == 1
        assert store.remove_orphans() == 0
    segments = Where(must=[Match("kind", "segment")])
    assert edge.backend.count(segments) == server.backend.count(segments) == 9


@pytest.mark.parametrize("level", ["doc", "segment"])
def test_recall_order_agrees(pair: tuple[TokenStore, TokenStore], level: str) -> None:
    edge, server = pair
    for seed in range(5):
        q = _query(seed)
        e, s = edge.recall(q, 3, level=level), server.recall(q, 3, level=level)  # type: ignore[arg-type]
        # segment level: c's best segment may be the orphan, which never makes c a candidate
        assert _ids(e) == _ids(s) and len(e) >= (3 if level == "doc" else 2)
        assert np.allclose([c.score for c in e], [c.score for c in s], atol=1e-4)
        assert [c.header.version for c in e] == [c.header.version for c in s]
    only_a = Where(must=[Match("doc_id", ["a", "c"])])
    assert _ids(edge.recall(_query(0), 3, where=only_a)) == _ids(server.recall(_query(0), 3, where=only_a))
    assert set(_ids(edge.recall(_query(0), 3, where=only_a))) == {"a", "c"}


def test_rank_segments_and_maxsim_agree(pair: tuple[TokenStore, TokenStore]) -> None:
    edge, server = pair
    versions = {d: h.version for d, h in edge.headers().items()}
    for seed in range(3):
        e = edge.rank_segments(_query(seed), versions, 5)
        s = server.rank_segments(_query(seed), versions, 5)
        assert [(d, i) for d, i, _ in e] == [(d, i) for d, i, _ in s] and len(e) == 5
        assert np.allclose([x for *_, x in e], [x for *_, x in s], atol=1e-4)
    if edge.meta.layout.dtype != "float32":
        return  # Qdrant scores MaxSim over stored numbers: only float rows mean the same on both engines
    qt = _query(7, rows=4)
    e, s = edge.rank_segments(qt, versions, 6), server.rank_segments(qt, versions, 6)
    assert [(d, i) for d, i, _ in e] == [(d, i) for d, i, _ in s]
    assert np.allclose([x for *_, x in e], [x for *_, x in s], atol=1e-4)
    # a shortlist: MaxSim over the segments nearest the pooled query only (one engine call, a prefetch)
    q = _query(7)
    near = {(d, i) for d, i, _ in edge.rank_segments(q, versions, 6)}
    e, s = (b.rank_segments(qt, versions, 3, shortlist=6, pooled=q) for b in (edge, server))
    assert [(d, i) for d, i, _ in e] == [(d, i) for d, i, _ in s] and len(e) == 3
    assert {(d, i) for d, i, _ in e} <= near
    full = {(d, i): x for d, i, x in edge.rank_segments(qt, versions, 9)}  # the shortlist is scored by MaxSim
    assert np.allclose([x for *_, x in e], [full[d, i] for d, i, _ in e], atol=1e-4)
    assert [x for *_, x in e] == sorted((x for *_, x in e), reverse=True)
    me, ms = edge.maxsim(qt, 3), server.maxsim(qt, 3)
    assert _ids(me) == _ids(ms) and np.allclose([c.score for c in me], [c.score for c in ms], atol=1e-4)
    assert _ids(edge.maxsim(qt, 3, ["b"])) == _ids(server.maxsim(qt, 3, ["b"])) == ["b"]


def test_fetch_segments_rows_and_offsets_agree(pair: tuple[TokenStore, TokenStore]) -> None:
    edge, server = pair
    versions = {d: h.version for d, h in edge.headers().items()}
    for indices in (None, {"a": [3, 1]}):
        e, s = edge.fetch_segments(versions, indices), server.fetch_segments(versions, indices)
        assert set(e) == set(s) == {"a", "b", "c"}
        for d in e:
            assert [x.index for x in e[d]] == [x.index for x in s[d]]
            for x, y in zip(e[d], s[d], strict=True):
                assert x.stored.dtype == y.stored.dtype and np.array_equal(x.stored, y.stored)
                assert (x.scales is None) == (y.scales is None)
                if x.scales is not None and y.scales is not None:
                    assert np.array_equal(x.scales, y.scales)
                assert np.array_equal(x.starts, y.starts) and np.array_equal(x.ends, y.ends)
                assert (x.char_start, x.text, x.version) == (y.char_start, y.text, y.version)
    assert [x.index for x in edge.fetch_segments(versions, {"a": [3, 1]})["a"]] == [1, 3]
    # the stored rows decode to what was written, on both backends alike
    a = fake_embedded("a", 60, DIM, seed=1, version=V1, window=8)
    rows = np.concatenate([edge.codec.decode_numpy(x.stored, x.scales) for x in edge.fetch_segments({"a": V1})["a"]])
    tol = {"float32": 1e-6, "int8": 2e-2, "binary": 2.0}[edge.meta.layout.dtype]
    assert rows.shape == a.vectors.shape and np.abs(rows - a.vectors).max() < tol
    wanted = {("a", V1): [0, 2], ("b", V2): [1]}
    assert edge.segment_texts(wanted) == server.segment_texts(wanted) and len(edge.segment_texts(wanted)) == 3


def test_filters_with_must_should_must_not_agree(pair: tuple[TokenStore, TokenStore]) -> None:
    edge, server = pair
    cases = [
        Where(must=[Match("kind", "segment"), Match("doc_id", "a")]),
        Where(must=[Match("kind", "segment")], should=[Match("doc_id", "a"), Match("doc_id", "b")]),
        Where(must=[Match("kind", "segment")], must_not=[Match("seg", [0, 1])]),
        Where(must=[Match("kind", "segment"), Match("doc_id", ["a", "c"], negate=True)]),
        Where(
            should=[
                Where(must=[Match("doc_id", "a"), Match("seg", [2])]),
                Where(must=[Match("doc_id", "b")], must_not=[Match("kind", "doc")]),
            ]
        ),
        Where(must=[Match("kind", "doc")], must_not=[Where(should=[Match("doc_id", "a"), Match("doc_id", "b")])]),
    ]
    expected = [4, 7, 10 - 7, 3, 1 + 3, 1]
    for where, n in zip(cases, expected, strict=True):
        e = sorted(r.id for r in edge.backend.scroll(where, []))
        s = sorted(r.id for r in server.backend.scroll(where, []))
        assert e == s and len(e) == n, where
        assert edge.backend.count(where) == server.backend.count(where) == n
    page = edge.backend.scroll(cases[2], [], limit=3)
    assert len(page) == 3 == len(server.backend.scroll(cases[2], [], limit=3))


def test_missing_collection_is_the_same_clear_error(tmp_path: Path) -> None:
    for kind in ("edge", "server"):
        with pytest.raises(StoreNotFoundError, match=r"no collection 'chunkless'.*run 'chunkless ingest"):
            open_store(_settings(tmp_path, kind).store)
