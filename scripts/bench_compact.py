"""Bytes on disk before and after `TokenStore.compact()` once a fraction of documents is deleted (Edge).

Usage: python scripts/bench_compact.py [--docs 40] [--tokens 4000] [--dim 384] [--delete 0.75]
[--storage float32 int8]. Random unit token vectors (tests/support.fake_embedded); one line per layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.store import open_or_create_store
from indexer.store.backend import folder_bytes
from schemas.layout import StorageLayout
from schemas.settings import Settings
from tests.support import fake_embedded


def run(layout: str, docs: int, tokens: int, dim: int, fraction: float) -> dict[str, object]:
    """One store: write `docs` documents, delete `fraction` of them, compact; the figures as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        lay = StorageLayout.parse(layout)
        settings = Settings(
            store_path=Path(tmp),
            storage_dtype=lay.dtype,
            storage_reduce=lay.reduce,
            storage_dim=lay.dim,
            storage_pool=lay.pool,
        )
        store = open_or_create_store(settings.store, "bench", dim, "mean")
        for i in range(docs):
            store.write_document(fake_embedded(f"d{i}", tokens, dim, seed=i))
        store.flush()
        full = store.stats()["bytes_on_disk"]
        t0 = time.perf_counter()
        n_del = round(docs * fraction)
        for i in range(n_del):
            store.delete_document(f"d{i}")
        store.flush()
        delete_s = time.perf_counter() - t0
        segments = settings.store.collection_path / "shard" / "segments"  # Edge's files, without its WAL
        seg_before = folder_bytes(segments)
        rep = store.compact()
        seg_after = folder_bytes(segments)
        again = store.compact()  # nothing left to vacuum: what an unconditional compact costs
        store.close()
    return {
        "layout": layout,
        "docs": docs,
        "tokens_per_doc": tokens,
        "deleted": n_del,
        "mb_full": round(full / 1e6, 1),
        "mb_after_delete": round((rep.bytes_before or 0) / 1e6, 1),
        "mb_after_compact": round((rep.bytes_after or 0) / 1e6, 1),
        "mb_segments_before": round(seg_before / 1e6, 1),
        "mb_segments_after": round(seg_after / 1e6, 1),
        "delete_s": round(delete_s, 2),
        "compact_s": round(rep.seconds, 2),
        "second_compact_s": round(again.seconds, 3),
        "mb_after_second": round((again.bytes_after or 0) / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--delete", type=float, default=0.75, help="fraction of documents to delete")
    ap.add_argument("--storage", nargs="+", default=["float32", "int8"])
    a = ap.parse_args(argv)
    for layout in a.storage:
        print(json.dumps(run(layout, a.docs, a.tokens, a.dim, a.delete)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
