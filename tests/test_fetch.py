"""The fetch path: the byte-bounded, version-keyed document cache, and token matrices that come back exact."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from indexer.store import open_or_create_store, to_array
from retriever.fetch import DocCache, Fetcher, SegmentTokens
from schemas.models import EmbeddedDocument
from schemas.settings import Settings
from tests.support import fake_embedded


def doc(doc_id: str, n: int, version: str = "v1", index: int = 0) -> SegmentTokens:
    """A segment of n 4-d tokens: 16 n bytes of vectors, 24 n of offsets, plus the text."""
    return SegmentTokens(
        doc_id=doc_id,
        version=version,
        index=index,
        vectors=torch.zeros(n, 4),
        starts=np.zeros(n, dtype=np.int64),
        ends=np.zeros(n, dtype=np.int64),
        ends_sentence=torch.zeros(n, dtype=torch.bool),
        char_start=0,
        text="",
    )


def held(cache: DocCache) -> list[SegmentTokens]:
    """Every segment the cache holds, least recently used first: its insides, which these tests check."""
    with cache._lock:
        return list(cache._items.values())


def test_cache_evicts_least_recently_used_within_bytes() -> None:
    size = doc("a", 10).nbytes
    cache = DocCache(3 * size)
    for d in "abc":
        cache.put(doc(d, 10))
    assert cache.get(("a", "v1", 0)) is not None  # a is now the most recent: b goes first
    cache.put(doc("d", 10))
    assert ("b", "v1", 0) not in cache and {("a", "v1", 0), ("c", "v1", 0), ("d", "v1", 0)} <= {
        s.key for s in held(cache)
    }
    assert cache.nbytes == 3 * size <= cache.max_bytes
    cache.put(doc("huge", 100))  # larger than the whole cache: not kept, nothing evicted for it
    assert ("huge", "v1", 0) not in cache and len(cache) == 3
    assert (cache.hits, cache.misses) == (1, 0)


def test_new_version_drops_the_old_one() -> None:
    cache = DocCache(1 << 20)
    cache.put(doc("a", 10, "v1", 0))
    cache.put(doc("a", 10, "v1", 1))
    cache.put(doc("b", 10, "v1"))
    cache.put(doc("a", 12, "v2", 1))  # any segment of a new version drops every segment of the old one
    assert cache.get(("a", "v1", 0)) is None and cache.get(("a", "v1", 1)) is None
    got = cache.get(("a", "v2", 1))
    assert got is not None and got.vectors.shape[0] == 12
    assert cache.nbytes == doc("a", 12).nbytes + doc("b", 10).nbytes


def test_cache_stays_consistent_under_threads() -> None:
    size = doc("x", 5).nbytes
    cache = DocCache(20 * size)
    barrier = threading.Barrier(4)

    def work(t: int) -> None:
        barrier.wait()  # start together so the threads really interleave
        for i in range(300):
            cache.put(doc(f"d{(i * 7 + t) % 50}", 5, f"v{i % 3}", i % 2))
            cache.get((f"d{i % 50}", f"v{t % 3}", t % 2))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert cache.nbytes == sum(d.nbytes for d in held(cache)) <= cache.max_bytes
    keys = [s.key for s in held(cache)]
    assert len({k[:2] for k in keys}) == len({k[0] for k in keys})  # one version per document
    assert cache.hits + cache.misses == 4 * 300


def test_fetcher_cached_equals_uncached_and_follows_versions(settings: Settings) -> None:
    store = open_or_create_store(settings.store, "m", 16, "mean")
    store.write_document(fake_embedded("a", 300, 16, seed=1, version="1" * 64))
    store.write_document(fake_embedded("b", 40, 16, seed=2))
    headers = {d: store.headers()[d] for d in ("a", "b")}  # fetch keeps this order
    cached = Fetcher(store, torch.device("cpu"), "separators", 1 << 20)
    uncached = Fetcher(store, torch.device("cpu"), "separators", 0)
    first = cached.fetch(headers)
    second = cached.fetch(headers)
    plain = uncached.fetch(headers)
    assert [d.doc_id for d in second] == ["a", "b"] and cached.cache.hits == 3  # a's two segments, b's one
    assert len(uncached.cache) == 0
    for x, y, z in zip(first, second, plain, strict=True):
        assert x.parts[0].data_ptr() == y.parts[0].data_ptr()  # served from the cache
        assert len(x.parts) == 1  # a's two segments were decoded together: one GEMV, not two
        assert torch.equal(y.vectors, z.vectors) and torch.equal(y.ends_sentence, z.ends_sentence)
        assert np.array_equal(y.starts, z.starts) and y.text == z.text
    # re-ingest a with new content: the new header's version misses the cache and the new rows come back
    new_a = fake_embedded("a", 120, 16, seed=3, version="2" * 64)
    store.write_document(new_a)
    got = cached.fetch({"a": store.headers()["a"]})[0]
    assert got.version == "2" * 64 and got.vectors.shape == (120, 16)
    np.testing.assert_allclose(got.vectors.numpy(), new_a.vectors, atol=1e-6)
    assert ("a", "1" * 64, 0) not in cached.cache
    store.close()


def test_stored_float32_rows_come_back_bit_exact(settings: Settings) -> None:
    """Edge hands vectors back as Python lists; their conversion to arrays must not round anything."""
    store = open_or_create_store(settings.store, "m", 5, "mean")
    emb = fake_embedded("a", 37, 5, seed=8)
    store.write_document(emb)
    (seg,) = store.fetch_segments({"a": "a" * 64})["a"]
    assert seg.stored.dtype == np.float32 and np.array_equal(seg.stored, emb.vectors)
    store.close()


def test_list_conversion_matches_asarray() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((37, 5)).astype(np.float32)
    rows = m.tolist()
    got = to_array(rows, np.float32)
    assert got.shape == (37, 5) and np.array_equal(got, np.asarray(rows, dtype=np.float32))
    flat = to_array(m[0].tolist(), np.float32)  # a plain (pooled) vector
    assert flat.shape == (5,) and np.array_equal(flat, m[0])
    assert to_array([], np.float32).shape == (0,)


def test_selective_fetch_returns_runs_of_the_chosen_segments(settings: Settings) -> None:
    store = open_or_create_store(settings.updated(segment_tokens=50).store, "m", 16, "mean")
    emb = fake_embedded("a", 230, 16, seed=4)  # 5 balanced segments of 46 rows
    store.write_document(emb)
    header = store.headers()["a"]
    assert header.n_segments == 5
    fetcher = Fetcher(store, torch.device("cpu"), "separators", 1 << 20)
    runs = fetcher.fetch({"a": header}, {"a": [3, 0, 2]})
    assert [r.key for r in runs] == [("a", "a" * 64, 0, 1), ("a", "a" * 64, 2, 2)]
    text = emb.doc.text
    for run in runs:
        rows = slice(46 * run.first_segment, 46 * (run.first_segment + run.n_segments))
        np.testing.assert_allclose(run.vectors.numpy(), emb.vectors[rows], atol=1e-6)
        assert np.array_equal(run.starts, emb.offsets[rows, 0])
        # absolute offsets slice the right words out of a text that starts mid-document
        words = [run.chars(int(a), int(b)) for a, b in zip(run.starts, run.ends, strict=True)]
        assert words == [text[a:b] for a, b in emb.offsets[rows]]
    assert runs[1].char_base == emb.offsets[92, 0] > 0
    # the whole document afterwards: the three cached segments are reused, one run comes back
    whole = fetcher.fetch({"a": header})
    assert len(whole) == 1 and whole[0].n == 230 and whole[0].text == text
    # row blocks: 0 | 1 | 2-3 (decoded together earlier) | 4; 1 and 4 share storage but are not neighbours
    assert [p.shape[0] for p in whole[0].parts] == [46, 46, 92, 46]
    assert fetcher.cache.hits == 3
    np.testing.assert_allclose(whole[0].relevance(torch.ones(16)).numpy(), emb.vectors.sum(1), atol=1e-5)
    store.close()


def windowed(emb: EmbeddedDocument, size: int) -> EmbeddedDocument:
    """Give a fake document one pooled vector per `size` tokens, as windowed embedding does."""
    bounds = np.array([[a, min(a + size, emb.n_tokens)] for a in range(0, emb.n_tokens, size)])
    pooled = np.stack([emb.vectors[a:b].mean(0) for a, b in bounds])
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return emb.model_copy(update={"window_pooled": pooled.astype(np.float32), "window_bounds": bounds})


def test_rank_segments_ranks_live_segments_by_pooled_cosine(settings: Settings) -> None:
    store = open_or_create_store(settings.updated(segment_tokens=40).store, "m", 16, "mean")
    old = fake_embedded("a", 120, 16, seed=5, version="1" * 64)
    new = windowed(fake_embedded("a", 120, 16, seed=6, version="2" * 64), 40)
    store.write_document(old)
    store.write_document(new)
    store.write_document(windowed(fake_embedded("b", 80, 16, seed=7), 40))
    target = new.vectors[40:80].sum(0)  # near segment 1 of a's live version
    target /= np.linalg.norm(target)
    ranked = store.rank_segments(target, {"a": "2" * 64, "b": "a" * 64}, 3)
    assert len(ranked) == 3 and ranked[0][:2] == ("a", 1)
    assert [s for _, _, s in ranked] == sorted((s for _, _, s in ranked), reverse=True)
    assert {d for d, _, _ in store.rank_segments(target, {"b": "a" * 64}, 5)} == {"b"}
    assert store.rank_segments(target, {"a": "1" * 64}, 5) == []  # a replaced version is never ranked
    # MaxSim over token rows: three rows of segment 2 match themselves exactly, a score of 3
    by_tokens = store.rank_segments(new.vectors[85:88], {"a": "2" * 64, "b": "a" * 64}, 2)
    assert by_tokens[0][:2] == ("a", 2) and by_tokens[0][2] == pytest.approx(3.0, abs=1e-4)
    store.close()
