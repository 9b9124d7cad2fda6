"""Long documents: embedded part by part with Python memory that does not grow with them, and a bounded WAL."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import indexer.long_documents as long_documents
from indexer.embedders import HFTokenEmbedder
from indexer.store import edge, open_or_create_store
from indexer.store.backend import folder_bytes
from indexer.windows import assign_central, owners, window_bounds, window_starts
from schemas.models import LoadedDocument
from schemas.settings import Settings
from tests.support import fake_embedded

WORDS = ["river", "copper", "glacier", "harbour", "violin", "lantern", "granite", "compass", "the", "of", "and"]


def text_of(words: int, seed: int = 3) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(" ".join(rng.choice(WORDS, 12)).capitalize() + "." for _ in range(words // 12))


def test_window_plan_and_owners_of_a_token_range_are_the_whole_document_ones() -> None:
    for n, width, stride in [(5000, 254, 190), (1000, 62, 46), (777, 64, 64), (300, 128, 32), (50, 64, 48)]:
        bounds = np.array([[s, min(s + width, n)] for s in window_starts(n, width, stride)], dtype=np.int64)
        np.testing.assert_array_equal(window_bounds(n, width, stride), bounds)
        whole = assign_central(n, bounds)
        rng = np.random.default_rng(n)
        for ts, te in [(0, n), (0, 1), (n - 1, n), *(sorted(rng.choice(n + 1, 2, replace=False)) for _ in range(20))]:
            np.testing.assert_array_equal(owners(bounds, int(ts), int(te)), whole[ts:te])


def test_token_stream_holds_a_sliding_range(tiny_qwen: HFTokenEmbedder) -> None:
    text = text_of(3000)
    win = tiny_qwen.windows()
    whole_ids, whole_off = tiny_qwen.tokenize(text)
    tokens = long_documents.TokenStream(win, text, chunk_chars=500)
    assert tokens.n == len(whole_ids) and tokens.end == 0  # counted, nothing held yet
    step = 700
    for s in range(0, tokens.n, step):
        e = min(s + step, tokens.n)
        assert tokens.ids(s, e).tolist() == whole_ids[s:e]
        np.testing.assert_array_equal(tokens.offsets(s, e), whole_off[s:e])
        tokens.drop_before(e)
        assert tokens.end - tokens.start < step + 500  # at most one piece beyond what was asked


def _traced_peak(doc: LoadedDocument, embedder: HFTokenEmbedder) -> tuple[int, int, int]:
    """(tracemalloc peak bytes, tokens, stored rows written) over one part-wise embedding of `doc`."""
    tracemalloc.start()
    try:
        rows = 0
        n_tokens = 0
        for item in long_documents.embed_in_parts(doc, embedder.windows(), 1024, 1, 512, chunk_chars=2000):
            if isinstance(item, long_documents.PartWrite):
                rows += sum(len(s.vectors) for s in item.segments)
            else:
                n_tokens = item.n_tokens
        return tracemalloc.get_traced_memory()[1], n_tokens, rows
    finally:
        tracemalloc.stop()


def test_python_memory_of_a_long_document_does_not_grow_with_it(tiny_qwen: HFTokenEmbedder) -> None:
    factor = 8
    docs = [
        LoadedDocument(doc_id=name, source=name, title=name, text=t, content_hash="0" * 64)
        for name, t in (("small", text_of(2_500)), ("big", text_of(2_500 * factor)))
    ]  # texts are allocated before tracing: a document's text is in memory once, by design
    (small_peak, small_n, small_rows), (big_peak, big_n, big_rows) = (_traced_peak(d, tiny_qwen) for d in docs)
    assert small_rows == small_n and big_rows == big_n  # every token was written
    assert big_n > (factor - 1) * small_n
    matrix = big_n * tiny_qwen.dim * 4  # the float32 token matrix a whole-document embedding holds
    # whole ids and offsets alone would add 24 B a token, the whole owner map and its temporaries 32 more;
    # what stays is the window plan (16 B a window) and where parts and segments happen to fall (the peak
    # moves by ~100 KB between sizes, about 5 B a token here)
    growth = (big_peak - small_peak) / (big_n - small_n)
    assert growth < 12, f"{growth:.1f} B a token more for a longer document (peaks {small_peak:,} -> {big_peak:,})"
    assert big_peak < matrix / 4


def test_edge_flushes_as_it_writes_so_the_wal_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge, "FLUSH_EVERY_BYTES", 8 << 20)
    settings = Settings(store_path=tmp_path / "store", storage_dtype="float32")
    store = open_or_create_store(settings.store, "fake", 384, "mean")
    try:
        written = 0
        for i in range(25):  # ~100 MB of float32 rows through the WAL (~130 MB of it unflushed)
            written += store.write_document(fake_embedded(f"d{i}", 2730, 384, seed=i)).bytes
        wal = folder_bytes(settings.store.collection_path / "shard" / "wal")
    finally:
        store.close()
    assert written > 95 << 20
    # Edge keeps at most the open 32 MB WAL segment and the one before it; unflushed, it held all of it
    assert wal < 80 << 20, f"WAL {wal >> 20} MB after {written >> 20} MB written"
