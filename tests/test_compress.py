"""Storage layouts: pooling, PCA, truncation and binary codes round trip; collections keep and check them."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer import codec
from indexer.codec import TokenCodec, fit, pool_document
from indexer.store import open_or_create_store, open_store
from schemas.errors import StoreMismatchError
from schemas.layout import StorageLayout
from schemas.settings import Settings
from tests.support import decode_plain_numpy, fake_embedded, write_bench

REPO = Path(__file__).resolve().parent.parent


def anisotropic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit rows sharing a strong common direction, like real token vectors."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) + 3.0 * rng.standard_normal(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def codec_for(name: str, x: np.ndarray) -> TokenCodec:
    layout = StorageLayout.parse(name)
    return TokenCodec(layout, x.shape[1], fit(layout, x) if layout.needs_fit else None)


def test_layout_names_round_trip_and_bad_names_fail() -> None:
    for name in ["float32", "int8", "int4-pool2", "binary", "float16-pca64", "int8-truncate128", "binary-pca256-pool2"]:
        assert StorageLayout.parse(name).name == name
    assert StorageLayout.parse("int8-pca128-pool2").vector_bytes_per_token(384) == 64
    assert StorageLayout.parse("binary").vector_bytes_per_token(384) == 48 + 2  # bits + float16 row scale
    assert StorageLayout.parse("int4-pool2").vector_bytes_per_token(384) == (192 + 2) / 2
    with pytest.raises(ValueError, match="DTYPE"):
        StorageLayout.parse("int2")
    with pytest.raises(ValueError, match="storage_dim"):
        Settings(storage_reduce="pca")


def test_plain_layouts_match_quantize() -> None:
    x = anisotropic(50, 32)
    for dtype in ("float32", "float16", "int8"):
        stored, scales = codec_for(dtype, x).encode(x)
        ref_stored, ref_scales = codec.encode_plain(x, dtype)
        assert np.array_equal(stored, ref_stored)
        assert np.allclose(codec_for(dtype, x).decode_numpy(stored, scales), decode_plain_numpy(stored, scales, dtype))
        assert (scales is None) == (ref_scales is None)


def test_pooling_keeps_character_ranges_and_unit_rows() -> None:
    emb = fake_embedded("d", 11, 16)
    pooled = pool_document(emb, 3)
    assert pooled.n_tokens == 4
    assert pooled.offsets[:, 0].tolist() == emb.offsets[[0, 3, 6, 9], 0].tolist()
    assert pooled.offsets[:, 1].tolist() == emb.offsets[[2, 5, 8, 10], 1].tolist()
    text = emb.doc.text
    assert text[pooled.offsets[0, 0] : pooled.offsets[-1, 1]] == text[emb.offsets[0, 0] : emb.offsets[-1, 1]]
    assert np.allclose(np.linalg.norm(pooled.vectors, axis=1), 1.0, atol=1e-5)
    mean = emb.vectors[:3].mean(0)
    assert np.allclose(pooled.vectors[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert pool_document(emb, 1) is emb


def test_pca_reconstructs_low_rank_rows_and_truncate_pads() -> None:
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((64, 8)))[0]
    x = (rng.standard_normal((500, 8)) @ basis.T + 0.5 * basis[:, 0]).astype(np.float32)  # rank 8 around a mean
    for name, atol in (("float32-pca8", 1e-4), ("int8-pca8", 0.02)):
        c = codec_for(name, x)
        stored, scales = c.encode(x)
        assert stored.shape == (500, 8)
        assert np.allclose(c.decode_numpy(stored, scales), x, atol=atol)
    t = codec_for("float32-truncate16", x)
    back = t.decode_numpy(*t.encode(x))
    assert np.array_equal(back[:, :16], x[:, :16]) and not back[:, 16:].any()


@pytest.mark.parametrize("dim", [64, 65])
def test_int4_round_trip_is_within_half_a_step(dim: int) -> None:
    x = anisotropic(200, dim, seed=4)
    c = codec_for("int4", x)
    stored, scales = c.encode(x)
    assert stored.dtype == np.uint8 and stored.shape == (200, -(-dim // 2) + 2) and scales is None
    back = c.decode_numpy(stored, scales)
    step = np.abs(x).max(axis=1, keepdims=True) / 7.0
    assert np.all(np.abs(back - x) <= step * 0.5 + 1e-3)  # rounding error, plus float16 scale rounding
    assert np.abs(back - x).max() > 0  # it did quantise


def test_binary_relevance_follows_float_relevance() -> None:
    x = anisotropic(3000, 128, seed=2)
    c = codec_for("binary", x)
    stored, scales = c.encode(x)
    assert stored.dtype == np.uint8 and stored.shape == (3000, 128 // 8 + 2) and scales is None
    decoded = c.decode_numpy(stored, scales)
    q = np.random.default_rng(3).standard_normal(128).astype(np.float32)
    q /= np.linalg.norm(q)
    corr = np.corrcoef(x @ q, decoded @ q)[0, 1]
    assert corr > 0.75  # 1-bit codes of centred coordinates keep most of the ranking signal
    # signs alone, uncentred, would mostly encode the shared direction: centring is what buys this
    naive = np.sign(x) / np.sqrt(128)
    assert corr > np.corrcoef(x @ q, naive @ q)[0, 1]


def test_collection_keeps_its_layout_and_refuses_another(settings: Settings) -> None:
    s = settings.updated(storage_dtype="binary", storage_pool=2)
    store = open_or_create_store(s.store, "m", 32, "mean")
    emb = fake_embedded("a", 40, 32, 1)
    store.write_document(emb)
    assert store.fit_codec(emb.vectors) is False  # fitted once, by the first document
    encoded = store.codec.encode(pool_document(emb, 2).vectors)
    store.close()

    store = open_store(s.store)  # parameters come back from the collection, not from memory
    seg = store.fetch_segments({"a": "a" * 64})["a"][0]
    assert seg.stored.shape == (20, 32 // 8 + 2)
    assert np.array_equal(seg.stored, encoded[0])
    assert store.headers()["a"].n_tokens == 40 and store.headers()["a"].n_rows == 20
    assert seg.starts.tolist() == emb.offsets[::2, 0].tolist()
    assert store.stats()["storage_layout"] == "binary-pool2"
    with pytest.raises(StoreMismatchError, match="MaxSim"):
        store.maxsim(emb.vectors[:2], 1)
    store.close()

    for update, message in (
        ({"storage_pool": 1}, "binary-pool2, not binary;"),
        ({"storage_reduce": "pca", "storage_dim": 16}, "binary-pool2, not binary-pca16-pool2"),
        ({"storage_dtype": "int8"}, "binary-pool2, not int8-pool2; set CHUNKLESS_STORAGE_DTYPE=binary"),
    ):
        with pytest.raises(StoreMismatchError, match=message):
            open_or_create_store(s.updated(**update).store, "m", 32, "mean")
    too_big = settings.updated(collection="x", storage_reduce="pca", storage_dim=64)
    with pytest.raises(StoreMismatchError, match="at most"):
        open_or_create_store(too_big.store, "m", 32, "mean")


def test_storage_experiment_writes_table_csv_and_plot(tmp_path: Path) -> None:
    bench = write_bench(tmp_path / "bench")
    spec = importlib.util.spec_from_file_location("storage_experiment", REPO / "scripts" / "storage_experiment.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "out"
    args = [str(bench), "--out", str(out), "--sample", "4", "--latency-queries", "1"]
    rc = mod.main([*args, "--configs", "float32,binary-pool2", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["config"] for r in rows] == ["float32", "binary-pool2", "chunks-128 (reference)"]
    by = {r["config"]: r for r in rows}
    # bytes come from the store's files (4 KiB blocks dominate a tiny corpus): fewer for the smaller layout,
    # and at least what float32 vectors need
    assert float(by["binary-pool2"]["vectors_bpt"]) < float(by["float32"]["vectors_bpt"]) / 4
    assert float(by["float32"]["vectors_bpt"]) >= 384 * 4
    assert all(0.0 <= float(r["hit1"]) <= 1.0 for r in rows)
    table = (out / "table.md").read_text()
    assert "| float32 |" in table and "7,366,656" in table and "Projection" in table
    assert (out / "quality_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"
