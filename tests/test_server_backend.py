"""The server backend, through qdrant-client's local mode.

No Qdrant server can run in CI, so these tests drive `ServerBackend` with `url="local:FOLDER"`:
qdrant-client's local mode answers the same API calls a server does (create with metadata, upsert,
scroll, query, count, delete by filter). It ignores vector datatypes, payload indexes, sharding and
on-disk settings, so what is tested here is the protocol and chunkless' semantics, not server storage.

The store scenarios that must answer alike on both backends are in tests/test_backend_parity.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from indexer.store import Match, NewPoint, Where, open_or_create_store, open_store, segment_id
from indexer.store.server import ServerBackend
from schemas.settings import Settings
from tests.support import decode_plain_numpy, fake_embedded


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(url=f"local:{tmp_path / 'qdrant'}", device="cpu", storage_dtype="float32")


def test_backend_is_the_server_one(settings: Settings) -> None:
    store = open_or_create_store(settings.store, "m", 8, "mean")
    assert isinstance(store.backend, ServerBackend) and store.backend.local
    # the collection records what it was built with in Qdrant's own collection metadata
    meta = store.backend.client.get_collection(settings.store.collection).config.metadata or {}
    assert meta["chunkless"]["dim"] == 8 and meta["spaces"]["tokens"]["datatype"] == "float32"
    store.close()


def test_mismatched_dtype_is_refused_with_a_clear_error(settings: Settings) -> None:
    open_or_create_store(settings.store, "m", 16, "mean").close()
    with pytest.raises(Exception, match="stores tokens as float32, not int8; set CHUNKLESS_STORAGE_DTYPE=float32"):
        open_or_create_store(settings.updated(storage_dtype="int8").store, "m", 16, "mean")
    store = open_store(settings.store)  # the refused open released the folder
    assert store.meta.storage_dtype == "float32"
    store.close()


@pytest.mark.parametrize(("dtype", "tol"), [("float16", 1e-3), ("int8", 1.5e-2)])
def test_dtype_round_trip(tmp_path: Path, dtype: str, tol: float) -> None:
    s = Settings(url=f"local:{tmp_path / 'q'}", storage_dtype=dtype, segment_tokens=None)  # one segment
    store = open_or_create_store(s.store, "m", 64, "mean")
    emb = fake_embedded("a", 300, 64, 4)
    store.write_document(emb)
    seg = store.fetch_segments({"a": "a" * 64})["a"][0]
    decoded = decode_plain_numpy(seg.stored, seg.scales, dtype)
    assert np.abs(decoded - emb.vectors).max() < tol
    store.close()


def test_orphans_are_invisible_then_removed(settings: Settings) -> None:
    store = open_or_create_store(settings.store, "m", 16, "mean")
    store.write_document(fake_embedded("a", 40, 16, 1, version="1" * 64))
    # a write killed after its segments, before its header: version 2 segments with no header
    half = fake_embedded("a", 30, 16, 2, version="2" * 64)
    store.backend.upsert(
        [
            NewPoint(
                segment_id("a", "2" * 64, 0),
                {"tokens": half.vectors, "pooled": half.pooled},
                {"kind": "segment", "doc_id": "a", "version": "2" * 64, "seg": 0, "written_at": time.time()},
            )
        ]
    )
    assert store.headers()["a"].version == "1" * 64
    assert [c.doc_id for c in store.recall(half.pooled, k=3, level="segment")] == []  # orphan never a candidate
    # a fresh orphan may be another worker's document in flight: spared within the grace period
    assert store.remove_orphans(min_age_s=3600) == 0
    assert store.remove_orphans() == 1
    assert store.backend.count(Where(must=[Match("kind", "segment")])) == 1
    store.close()


def test_filter_translation_covers_every_form(settings: Settings) -> None:
    f = ServerBackend(settings.store).translate(
        Where(
            must=[Match("kind", "segment"), Match("doc_id", ["a", "b"])],
            should=[Where(must=[Match("version", "v")])],
            must_not=[Match("doc_id", ["c"], negate=True)],
        )
    )
    assert f.must is not None and len(f.must) == 2 and f.should is not None and f.must_not is not None
    dumped = f.model_dump_json(by_alias=True, exclude_none=True)
    assert '"any":["a","b"]' in dumped and '"except":["c"]' in dumped and '"value":"v"' in dumped


def test_local_mode_folder_held_by_another_process_is_busy(settings: Settings) -> None:
    import subprocess
    import sys

    from tests.support import REPO

    store = open_or_create_store(settings.store, "m", 8, "mean")
    code = (
        "import sys\nfrom indexer.store import open_store\nfrom schemas.errors import StoreBusyError\n"
        "from schemas.settings import Settings\n"
        f"s = Settings(url={settings.store.url!r}).store\n"
        "try:\n    open_store(s)\nexcept StoreBusyError as e:\n    print(e); sys.exit(e.exit_code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    store.close()
    assert out.returncode == 4, out.stderr
    assert "open in another process" in out.stdout and str(settings.store.url)[len("local:") :] in out.stdout
