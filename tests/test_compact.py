"""Reclaiming deleted documents' space: `TokenStore.compact` and `chunkless compact` on a real Edge store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.store import TokenStore, open_or_create_store, open_store
from retriever.cli import main
from schemas.settings import Settings
from tests.support import fake_embedded

DIM = 128
TOKENS = 2000


def fill(settings: Settings, docs: int, tokens: int = TOKENS) -> TokenStore:
    """A store of `docs` random documents d0.. of `tokens` tokens each (distinct versions, so distinct points)."""
    store = open_or_create_store(settings.store, "m", DIM, "mean")
    for i in range(docs):
        store.write_document(fake_embedded(f"d{i}", tokens, DIM, seed=i, version=f"{i:064x}", window=500))
    store.flush()
    return store


def snapshot(store: TokenStore, doc_id: str) -> tuple[np.ndarray, str, list[str]]:
    """A document's stored token rows, its text, and the order maxsim ranks every document for its first rows."""
    head = store.header(doc_id)
    assert head is not None
    segs = store.fetch_segments({doc_id: head.version})[doc_id]
    rows = np.concatenate([s.stored for s in segs])
    ranked = [c.doc_id for c in store.maxsim(rows[:8], k=10)]
    return rows, "".join(s.text for s in segs), ranked


def test_compact_reclaims_deleted_documents_and_keeps_the_rest(settings: Settings) -> None:
    store = fill(settings, 8)
    full = store.stats()["bytes_on_disk"]
    for i in range(6):
        assert store.delete_document(f"d{i}")
    before = {d: snapshot(store, d) for d in ("d6", "d7")}
    assert store.stats()["bytes_on_disk"] >= 0.9 * full  # a delete only marks points: the bytes stay

    rep = store.compact()
    assert rep.bytes_before is not None and rep.bytes_after is not None and rep.reclaimed is not None
    # the deleted documents' token bytes come back; the write-ahead log (about half this small store) stays
    assert rep.reclaimed >= 0.8 * 6 * TOKENS * settings.store.layout.vector_bytes_per_token(DIM), rep
    assert rep.bytes_after < 0.75 * rep.bytes_before, rep
    assert rep.reclaimed == rep.bytes_before - rep.bytes_after and rep.seconds >= 0
    store.close()

    store = open_store(settings.store)  # from disk: the rewrite is durable
    assert set(store.headers()) == {"d6", "d7"} and store.stats()["bytes_on_disk"] == rep.bytes_after
    for d, (rows, text, ranked) in before.items():
        rows2, text2, ranked2 = snapshot(store, d)
        assert np.array_equal(rows2, rows) and text2 == text and ranked2 == ranked
        assert ranked2[0] == d
    emb = fake_embedded("d7", TOKENS, DIM, seed=7, version=f"{7:064x}", window=500)
    assert store.recall(emb.pooled, k=1)[0].doc_id == "d7"
    store.close()


def test_compact_on_an_empty_collection(settings: Settings) -> None:
    store = open_or_create_store(settings.store, "m", DIM, "mean")
    rep = store.compact()
    assert rep.bytes_before is not None and rep.bytes_after is not None
    assert store.stats()["documents"] == 0
    store.write_document(fake_embedded("a", 300, DIM))  # still writable after compacting nothing
    assert store.delete_document("a")
    store.compact()
    assert store.headers() == {} and store.stats()["segments"] == 0
    store.close()


def test_local_mode_compact_is_a_no_op_that_keeps_documents(tmp_path: Path) -> None:
    settings = Settings(url=f"local:{tmp_path / 'q'}", device="cpu", storage_dtype="float32")
    store = open_or_create_store(settings.store, "m", 32, "mean")
    a = fake_embedded("a", 200, 32, seed=1)
    store.write_document(a)
    store.write_document(fake_embedded("b", 200, 32, seed=2, version="b" * 64))
    store.delete_document("b")
    store.compact()
    assert set(store.headers()) == {"a"}
    assert np.allclose(store.fetch_segments({"a": "a" * 64})["a"][0].stored, a.vectors, atol=1e-6)
    store.close()


def test_cli_compact_prints_bytes_before_and_after(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    store = fill(settings, 5)
    for i in range(4):
        store.delete_document(f"d{i}")
    store.close()
    path = str(settings.store.store_path)
    capsys.readouterr()
    assert main(["compact", "--store", path, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["bytes_before"] - rep["bytes_after"] >= 0.8 * 4 * TOKENS * DIM * 4
    assert main(["compact", "--store", path]) == 0  # nothing left to reclaim: the same bytes, said plainly
    err = capsys.readouterr().err
    mb = f"{rep['bytes_after'] / 1e6:.1f} MB"
    assert err.startswith("compacted: ") and f"{mb} -> {mb} on disk (0.0 MB reclaimed)" in err
    assert main(["stats", "--store", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 1


def test_cli_delete_compacts_when_a_large_share_goes(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_or_create_store(settings.store, "m", DIM, "mean")
    store.write_document(fake_embedded("big", 6000, DIM, seed=1, version="1" * 64))
    store.write_document(fake_embedded("small", 200, DIM, seed=2, version="2" * 64))
    store.write_document(fake_embedded("tiny", 100, DIM, seed=3, version="3" * 64))
    store.flush()
    full = store.stats()["bytes_on_disk"]
    store.close()
    path = str(settings.store.store_path)
    capsys.readouterr()

    assert main(["delete", "small", "--store", path]) == 0  # 3% of the tokens: no rewrite of the whole store
    assert "compacted" not in capsys.readouterr().err
    assert main(["delete", "big", "--store", path]) == 0  # 98%: compacted at once
    err = capsys.readouterr().err
    assert "deleted big" in err and "compacted: " in err
    assert main(["stats", "--store", path, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["documents"] == 1 and st["bytes_on_disk"] <= full - 0.8 * 6000 * DIM * 4
