"""The Edge store: real Qdrant engine on a temporary path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from indexer.store import CollectionMeta, DocHeader, open_or_create_store, open_store
from indexer.store.segments import MAX_MULTIVECTOR_NUMBERS, max_segment_tokens, split_segments
from schemas.errors import StoreMismatchError, StoreNotFoundError
from schemas.layout import StorageLayout
from schemas.settings import Settings
from tests.support import decode_plain_numpy, fake_embedded


@pytest.mark.parametrize(("dim", "cap"), [(1024, 1023), (384, 2730)])
def test_segments_stay_under_server_limit(dim: int, cap: int) -> None:
    assert max_segment_tokens(dim) == cap
    emb = fake_embedded("d", 2 * cap + 5, dim)
    segs = split_segments(emb)
    assert len(segs) == 3
    assert all(s.vectors.size < MAX_MULTIVECTOR_NUMBERS for s in segs)
    assert sum(len(s.vectors) for s in segs) == emb.n_tokens
    # character ranges tile the text exactly
    assert segs[0].char_start == 0 and segs[-1].char_end == len(emb.doc.text)
    assert all(a.char_end == b.char_start for a, b in itertools.pairwise(segs))
    assert split_segments(fake_embedded("e", cap, dim))[0].vectors.shape[0] == cap


def test_round_trip_and_reopen(settings: Settings) -> None:
    settings = settings.updated(segment_tokens=None)  # segments as large as a server takes
    store = open_or_create_store(settings.store, "m", 32, "mean")
    a, b = fake_embedded("a", 50, 32, 1), fake_embedded("b", 3000, 32, 2)
    store.write_document(a)
    store.write_document(b)
    store.close()

    store = open_store(settings.store)  # a fresh open reads everything back from disk
    assert set(store.headers()) == {"a", "b"}
    assert store.headers()["b"].n_segments == 1  # 32-d allows 32767 rows per segment
    got = store.fetch_segments({"a": "a" * 64})["a"]
    assert np.allclose(np.concatenate([s.stored for s in got]), a.vectors, atol=1e-6)
    assert "".join(s.text for s in got) == a.doc.text
    hits = store.recall(b.pooled, k=1)
    assert hits[0].doc_id == "b" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert store.stats()["tokens"] == 3050 and store.stats()["bytes_on_disk"] > 0
    store.close()


def test_multi_segment_document_reassembles(settings: Settings) -> None:
    settings = settings.updated(segment_tokens=None)  # 1,023 rows at 1024-d: the server limit
    store = open_or_create_store(settings.store, "m", 1024, "last")
    emb = fake_embedded("big", 2500, 1024, 3)
    store.write_document(emb)
    segs = store.fetch_segments({"big": "a" * 64})["big"]
    assert [s.index for s in segs] == [0, 1, 2]
    assert np.allclose(np.concatenate([s.stored for s in segs]), emb.vectors, atol=1e-6)
    assert "".join(s.text for s in segs) == emb.doc.text
    store.close()


def test_changed_document_replaces_old_version(settings: Settings) -> None:
    store = open_or_create_store(settings.store, "m", 16, "mean")
    store.write_document(fake_embedded("a", 40, 16, 1, version="1" * 64))
    new = fake_embedded("a", 25, 16, 2, version="2" * 64)
    store.write_document(new)
    assert store.headers()["a"].version == "2" * 64
    assert store.fetch_segments({"a": "1" * 64}) == {}
    assert store.stats()["segments"] == 1
    assert store.delete_document("a") and store.headers() == {}
    store.close()


def test_mismatched_model_dim_and_dtype_are_refused(settings: Settings) -> None:
    open_or_create_store(settings.store, "m", 16, "mean").close()
    with pytest.raises(StoreMismatchError, match="16-d"):
        open_or_create_store(settings.store, "m", 32, "mean")
    with pytest.raises(StoreMismatchError, match="built with model 'm'"):
        open_or_create_store(settings.store, "other", 16, "mean")
    with pytest.raises(StoreMismatchError, match="stores tokens as float32, not int8"):
        open_or_create_store(settings.updated(storage_dtype="int8").store, "m", 16, "mean")
    store = open_store(settings.store)
    with pytest.raises(StoreMismatchError, match="query vector is 8-d"):
        store.recall(np.ones(8, dtype=np.float32), 3)
    store.close()


def test_missing_store_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(StoreNotFoundError, match="run 'chunkless ingest"):
        open_store(settings.store)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-6), ("float16", 1e-3), ("int8", 1.5e-2)])
def test_dtype_round_trip_bounds_relevance_error(tmp_path, dtype: str, tol: float) -> None:
    s = Settings(store_path=tmp_path, storage_dtype=dtype, segment_tokens=None)  # one segment holds the document
    store = open_or_create_store(s.store, "m", 384, "mean")
    emb = fake_embedded("a", 500, 384, 4)
    store.write_document(emb)
    seg = store.fetch_segments({"a": "a" * 64})["a"][0]
    decoded = decode_plain_numpy(seg.stored, seg.scales, dtype)
    q = np.random.default_rng(5).standard_normal(384).astype(np.float32)
    q /= np.linalg.norm(q)
    err = np.abs(decoded @ q - emb.vectors @ q).max()
    assert err < tol
    if dtype == "int8":
        assert seg.stored.dtype == np.uint8 and seg.stored.min() >= 1 and seg.stored.max() <= 255
    store.close()


def test_second_process_on_an_edge_store_gets_a_clear_error(settings: Settings) -> None:
    import subprocess
    import sys

    store = open_or_create_store(settings.store, "m", 8, "mean")
    store.write_document(fake_embedded("a", 5, 8))
    code = (
        "import sys; from schemas import Settings; from indexer.store import open_store; "
        "from schemas.errors import StoreBusyError\n"
        f"s = Settings(store_path={str(settings.store.store_path)!r})\n"
        # the open itself fails: a search learns the store is busy before it loads a model
        "try:\n    open_store(s.store)\nexcept StoreBusyError as e:\n    print(e); sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    store.close()
    assert out.returncode == 3, out.stderr
    assert "open in another process" in out.stdout and str(settings.store.store_path) in out.stdout


def test_collection_metadata_of_the_old_flat_form_reads(settings: Settings) -> None:
    """Collections written before `layout` was one object recorded storage_dtype/_reduce/_dim/_pool flat."""
    import json

    old = {"model": "m", "dim": 32, "pooling": "mean", "storage_dtype": "int8", "schema_version": 1}
    assert CollectionMeta.model_validate(old).layout == StorageLayout(dtype="int8")
    old_pca = old | {"storage_dtype": "binary", "storage_reduce": "pca", "storage_dim": 16, "storage_pool": 2}
    assert CollectionMeta.model_validate(old_pca).layout == StorageLayout(dtype="binary", reduce="pca", dim=16, pool=2)

    s = settings.updated(storage_dtype="int8")
    store = open_or_create_store(s.store, "m", 32, "mean")
    store.write_document(fake_embedded("a", 40, 32))
    store.close()
    path = s.store.collection_path / "chunkless.json"
    meta = json.loads(path.read_text())
    layout = meta["chunkless"].pop("layout")
    assert layout == {"dtype": "int8", "reduce": "none", "dim": None, "pool": 1}
    meta["chunkless"] |= {"storage_dtype": "int8", "storage_reduce": "none", "storage_dim": None, "storage_pool": 1}
    path.write_text(json.dumps(meta))
    store = open_or_create_store(s.store, "m", 32, "mean")  # the old form matches the same settings
    assert store.meta.layout == StorageLayout(dtype="int8") and store.headers()["a"].n_rows == 40
    store.close()


def test_doc_header_reads_old_and_unknown_payloads() -> None:
    old = {"kind": "doc", "doc_id": "a", "version": "v", "source": "/a", "title": "a", "n_tokens": 7}
    h = DocHeader.model_validate(old | {"n_segments": 1, "page_starts": [0], "text_len": 9, "future_key": 1})
    assert h.n_rows == 7 and h.page_labels is None and h.structure is None and h.ingested_at == 0.0
    assert h.to_payload()["kind"] == "doc" and "page_labels" not in h.to_payload()


def test_search_on_a_busy_store_says_busy_before_loading_a_model(settings: Settings) -> None:
    """The store is opened (and its lock taken) before the model: a model that cannot load is never reached."""
    import os
    import subprocess
    import sys

    from tests.support import REPO

    store = open_or_create_store(settings.store, "m", 8, "mean")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHUNKLESS_MODEL": str(settings.store.store_path / "no-model")}
    code = "import sys; from retriever.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["search", "anything", "--store", str(settings.store.store_path)]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)
    store.close()
    assert out.returncode != 0 and "open in another process" in out.stderr, out.stderr
    assert "no-model" not in out.stderr and "Traceback" not in out.stderr
