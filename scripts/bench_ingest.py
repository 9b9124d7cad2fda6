"""Ingest throughput and storage per token.

(a) store writes alone: random unit token vectors through `TokenStore.write_document` (quantize,
    payload, segments-then-header) at 1024-d and 128-d in float32, float16 and int8;
(b) the full pipeline (`indexer.pipeline.ingest`: load, embed, write, overlapped) with MiniLM on the
    CPU, next to the model alone on the same documents, so the store's share is visible;
(c) with --squad: bytes per token that `chunkless stats` reports for each dtype on a benchmark's
    corpus.jsonl (each article written to a .txt file and ingested; embedded once, stored three times),
    split into write-ahead log, vector storage and the rest.

Usage: python scripts/bench_ingest.py [--tokens 40000] [--corpus DIR] [--squad ../shared/benchmarks/squad2-dev]
Timings are wall-clock on whatever machine runs it; they are figures to read, not assertions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.embedders import HFTokenEmbedder
from indexer.pipeline import ingest
from indexer.store import open_or_create_store, open_store
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import Settings, StorageDtype

DTYPES: list[StorageDtype] = ["float32", "float16", "int8"]


def random_doc(i: int, n: int, dim: int, rng: np.random.Generator) -> EmbeddedDocument:
    """n random unit token vectors over a synthetic text of n five-character words."""
    text = " ".join(f"w{j % 10000:04d}" for j in range(n))
    starts = np.arange(n, dtype=np.int64) * 6
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pooled = v.mean(0) / np.linalg.norm(v.mean(0))
    doc = LoadedDocument(doc_id=f"d{i}", source=f"/bench/d{i}", title=f"d{i}", text=text, content_hash=f"{i:064d}")
    return EmbeddedDocument(
        doc=doc,
        vectors=v,
        offsets=np.stack([starts, starts + 5], 1),
        pooled=pooled,
        window_pooled=pooled[None],
        window_bounds=np.array([[0, n]]),
    )


def disk_split(folder: Path) -> dict[str, int]:
    """Allocated bytes under an Edge collection folder: write-ahead log, vector storage, everything else."""
    out = {"wal": 0, "vectors": 0, "other": 0}
    for f in folder.rglob("*"):
        if not f.is_file():
            continue
        b = f.stat().st_blocks * 512
        part = (
            "wal"
            if "wal" in f.parts
            else "vectors"
            if any(p.startswith("vector_storage") for p in f.parts)
            else "other"
        )
        out[part] += b
    return out


def bench_store(tokens: int, doc_tokens: int, tmp: Path) -> None:
    print(f"(a) store writes alone: {tokens:,} random unit tokens in documents of {doc_tokens:,} tokens (Edge)")
    print(f"{'dim':>5} {'dtype':>8} {'tokens/s':>12} {'MB/s':>8} {'B/token disk':>13} {'wal':>7} {'vectors':>8}")
    for dim in (1024, 128):
        rng = np.random.default_rng(0)
        docs = [random_doc(i, doc_tokens, dim, rng) for i in range(max(1, tokens // doc_tokens))]
        n = sum(d.n_tokens for d in docs)
        for dtype in DTYPES:
            s = Settings(store_path=tmp / f"store-{dim}-{dtype}", storage_dtype=dtype)
            store = open_or_create_store(s.store, "bench", dim, "mean")
            t0 = time.perf_counter()
            nbytes = sum(store.write_document(d).bytes for d in docs)
            store.flush()
            dt = time.perf_counter() - t0
            store.close()
            split = disk_split(s.collection_path)
            total = sum(split.values())
            print(
                f"{dim:>5} {dtype:>8} {n / dt:>12,.0f} {nbytes / dt / 1e6:>8.1f} {total / n:>13,.0f} "
                f"{split['wal'] / n:>7,.0f} {split['vectors'] / n:>8,.0f}"
            )
            shutil.rmtree(s.store_path)


class MemoEmbedder:
    """Embeds each document once; later runs (other dtypes) reuse the vectors."""

    def __init__(self, inner: HFTokenEmbedder) -> None:
        self.inner, self.name, self.dim, self.pooling = inner, inner.name, inner.dim, inner.pooling
        self.cache: dict[str, EmbeddedDocument] = {}
        self.seconds = 0.0

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        todo = [d for d in docs if d.content_hash not in self.cache]
        t0 = time.perf_counter()
        for e in self.inner.embed_documents(todo) if todo else []:
            self.cache[e.doc.content_hash] = e
        self.seconds += time.perf_counter() - t0
        return [self.cache[d.content_hash].model_copy(update={"doc": d}) for d in docs]

    def embed_query(self, query: str) -> np.ndarray:
        return self.inner.embed_query(query)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)


def bench_pipeline(corpus: Path, tmp: Path) -> None:
    print(f"\n(b) full pipeline, MiniLM on the CPU, corpus {corpus}")
    settings = Settings(store_path=tmp / "pipeline", device="cpu")
    model = HFTokenEmbedder(settings)
    t0 = time.perf_counter()
    docs = [d for d in (load(p) for p in sorted(corpus.rglob("*")) if p.is_file()) if d is not None]
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedded = model.embed_documents(docs)
    model_s = time.perf_counter() - t0
    n = sum(e.n_tokens for e in embedded)
    report = ingest([corpus], settings, embedder=model)
    print(f"  parsing alone: {len(docs)} files in {load_s:.1f}s")
    print(f"  model alone:   {n:,} tokens in {model_s:.1f}s = {n / model_s:,.0f} tokens/s")
    print(
        f"  full pipeline: {report.tokens:,} tokens in {report.seconds:.1f}s = {report.tokens_per_second:,.0f} "
        f"tokens/s ({len(report.failures)} failures; parse + model + write run overlapped)"
    )


def load(path: Path) -> LoadedDocument | None:
    from indexer.loaders import SUPPORTED_SUFFIXES, load_file

    return load_file(path, path.name) if path.suffix.lower() in SUPPORTED_SUFFIXES else None


def bench_squad(bench_dir: Path, tmp: Path) -> None:
    print(f"\n(c) bytes per token by dtype, {bench_dir.name} (articles as .txt, ingested by the pipeline)")
    corpus = tmp / bench_dir.name
    corpus.mkdir()
    for line in (bench_dir / "corpus.jsonl").read_text().splitlines():
        rec = json.loads(line)
        (corpus / f"{rec['doc_id']}.txt").write_text(rec["text"])
    memo = MemoEmbedder(HFTokenEmbedder(Settings(device="cpu")))
    print(f"{'dtype':>8} {'docs':>5} {'tokens':>8} {'B/token':>8} {'wal':>6} {'vectors':>8} {'other':>6}")
    for dtype in DTYPES:
        s = Settings(store_path=tmp / f"squad-{dtype}", storage_dtype=dtype, device="cpu")
        ingest([corpus], s, embedder=memo)
        store = open_store(s.store)
        st = store.stats()
        store.close()
        split = {k: v / st["tokens"] for k, v in disk_split(s.collection_path).items()}
        print(
            f"{dtype:>8} {st['documents']:>5} {st['tokens']:>8,} {st['bytes_per_token']:>8,.0f} "
            f"{split['wal']:>6,.0f} {split['vectors']:>8,.0f} {split['other']:>6,.0f}"
        )
    print(f"  (embedding once took {memo.seconds:.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=40_000, help="tokens written per store configuration")
    ap.add_argument("--doc-tokens", type=int, default=2_000)
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parent.parent / "demo" / "corpus")
    ap.add_argument("--squad", type=Path, help="a benchmark folder with corpus.jsonl, for (c)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["store", "pipeline"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as t:
        tmp = Path(t)
        if "store" not in args.skip:
            bench_store(args.tokens, args.doc_tokens, tmp)
        if "pipeline" not in args.skip:
            bench_pipeline(args.corpus, tmp)
        if args.squad:
            bench_squad(args.squad, tmp)


if __name__ == "__main__":
    main()
