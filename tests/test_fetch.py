"""The fetch path: the byte-bounded, version-keyed document cache and Edge's list -> array conversion."""

from __future__ import annotations

import threading

import numpy as np
import torch

from indexer.edge_backend import _to_array
from indexer.store import open_or_create_store
from retriever.fetch import DocCache, DocTokens, Fetcher
from schemas.settings import Settings
from tests.test_store import fake_embedded


def doc(doc_id: str, n: int, version: str = "v1") -> DocTokens:
    """A DocTokens of n 4-d tokens: 16 n bytes of vectors, 24 n of offsets, plus the text."""
    return DocTokens(
        doc_id=doc_id,
        version=version,
        header={},
        vectors=torch.zeros(n, 4),
        starts=np.zeros(n, dtype=np.int64),
        ends=np.zeros(n, dtype=np.int64),
        ends_sentence=torch.zeros(n, dtype=torch.bool),
        text="",
    )


def test_cache_evicts_least_recently_used_within_bytes() -> None:
    size = doc("a", 10).nbytes
    cache = DocCache(3 * size)
    for d in "abc":
        cache.put(doc(d, 10))
    assert cache.get(("a", "v1")) is not None  # a is now the most recent: b goes first
    cache.put(doc("d", 10))
    assert ("b", "v1") not in cache and {("a", "v1"), ("c", "v1"), ("d", "v1")} <= set(cache._items)
    assert cache.nbytes == 3 * size <= cache.max_bytes
    cache.put(doc("huge", 100))  # larger than the whole cache: not kept, nothing evicted for it
    assert ("huge", "v1") not in cache and len(cache) == 3
    assert (cache.hits, cache.misses) == (1, 0)


def test_new_version_drops_the_old_one() -> None:
    cache = DocCache(1 << 20)
    cache.put(doc("a", 10, "v1"))
    cache.put(doc("b", 10, "v1"))
    cache.put(doc("a", 12, "v2"))
    assert cache.get(("a", "v1")) is None
    got = cache.get(("a", "v2"))
    assert got is not None and got.vectors.shape[0] == 12
    assert cache.nbytes == doc("a", 12).nbytes + doc("b", 10).nbytes


def test_cache_stays_consistent_under_threads() -> None:
    size = doc("x", 5).nbytes
    cache = DocCache(20 * size)
    barrier = threading.Barrier(4)

    def work(t: int) -> None:
        barrier.wait()  # start together so the threads really interleave
        for i in range(300):
            cache.put(doc(f"d{(i * 7 + t) % 50}", 5, f"v{i % 3}"))
            cache.get((f"d{i % 50}", f"v{t % 3}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert cache.nbytes == sum(d.nbytes for d in cache._items.values()) <= cache.max_bytes
    assert len({k[0] for k in cache._items}) == len(cache)  # at most one version per document
    assert cache.hits + cache.misses == 4 * 300


def test_fetcher_cached_equals_uncached_and_follows_versions(settings: Settings) -> None:
    store = open_or_create_store(settings, "m", 16, "mean")
    store.write_document(fake_embedded("a", 300, 16, seed=1, version="1" * 64))
    store.write_document(fake_embedded("b", 40, 16, seed=2))
    headers = {d: store.headers()[d] for d in ("a", "b")}  # fetch keeps this order
    cached = Fetcher(store, torch.device("cpu"), "separators", 1 << 20)
    uncached = Fetcher(store, torch.device("cpu"), "separators", 0)
    first = cached.fetch(headers)
    second = cached.fetch(headers)
    plain = uncached.fetch(headers)
    assert [d.doc_id for d in second] == ["a", "b"] and cached.cache.hits == 2
    assert len(uncached.cache) == 0
    for x, y, z in zip(first, second, plain, strict=True):
        assert x is y  # served from the cache
        assert torch.equal(y.vectors, z.vectors) and torch.equal(y.ends_sentence, z.ends_sentence)
        assert np.array_equal(y.starts, z.starts) and y.text == z.text
    # re-ingest a with new content: the new header's version misses the cache and the new rows come back
    new_a = fake_embedded("a", 120, 16, seed=3, version="2" * 64)
    store.write_document(new_a)
    got = cached.fetch({"a": store.headers()["a"]})[0]
    assert got.version == "2" * 64 and got.vectors.shape == (120, 16)
    np.testing.assert_allclose(got.vectors.numpy(), new_a.vectors, atol=1e-6)
    assert ("a", "1" * 64) not in cached.cache
    store.close()


def test_list_conversion_matches_asarray() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((37, 5)).astype(np.float32)
    rows = m.tolist()
    got = _to_array(rows, np.float32)
    assert got.shape == (37, 5) and np.array_equal(got, np.asarray(rows, dtype=np.float32))
    flat = _to_array(m[0].tolist(), np.float32)  # a plain (pooled) vector
    assert flat.shape == (5,) and np.array_equal(flat, m[0])
    assert _to_array([], np.float32).shape == (0,)
