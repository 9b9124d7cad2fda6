"""The default storage layout: float16 rows, MaxSim segment ranking, the same spans as float32 on real text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import open_store
from retriever import Retriever
from schemas.settings import Settings
from tests.support import DEMO


def test_default_storage_is_float16_and_searches_like_float32(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    assert Settings().store.storage_dtype == "float16"
    half = Settings(store_path=tmp_path / "half", device="cpu")
    full = Settings(store_path=tmp_path / "full", device="cpu", storage_dtype="float32")
    reports = [ingest([DEMO], s, embedder=minilm) for s in (half, full)]
    assert all(r.documents == 3 and not r.failures for r in reports)
    assert 2 * reports[0].bytes_stored == reports[1].bytes_stored  # float16 rows are reported at 2 B a number
    store = open_store(half.store, read_only=True)
    try:
        assert store.meta.layout.name == "float16" and store.meta.layout.is_plain  # MaxSim still ranks segments
        head = next(iter(store.headers().values()))
        rows = np.concatenate([seg.stored for seg in store.fetch_segments({head.doc_id: head.version})[head.doc_id]])
        assert rows.dtype == np.float32 and np.array_equal(rows, rows.astype(np.float16).astype(np.float32))
    finally:
        store.close()
    query = "How does a steam engine turn heat into mechanical work?"
    with Retriever(half, embedder=minilm) as a, Retriever(full, embedder=minilm) as b:
        ra, rb = a.search(query), b.search(query)
    assert [(s.doc_id, s.start, s.end) for s in ra.spans] == [(s.doc_id, s.start, s.end) for s in rb.spans]
    assert ra.spans[0].score == pytest.approx(rb.spans[0].score, abs=5e-3)


def test_an_existing_collection_keeps_its_layout_unless_another_is_asked_for(tmp_path: Path) -> None:
    from indexer.store import open_or_create_store
    from schemas.errors import StoreMismatchError

    old = Settings(store_path=tmp_path / "s", storage_dtype="float32")  # a store made before float16 was the default
    open_or_create_store(old.store, "m", 16, "mean").close()
    store = open_or_create_store(Settings(store_path=tmp_path / "s").store, "m", 16, "mean")  # default not asked
    assert store.meta.layout.name == "float32"
    store.close()
    with pytest.raises(StoreMismatchError, match="stores tokens as float32, not int8"):
        open_or_create_store(Settings(store_path=tmp_path / "s", storage_dtype="int8").store, "m", 16, "mean")
