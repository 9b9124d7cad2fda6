"""Query latency over a >= 1M-token corpus of random unit vectors: recall, fetch and scoring, cold and warm.

Builds the corpus straight through `TokenStore.write_document` (no model) into an Edge store in a
temporary folder, then runs fixed random query vectors through `Retriever.search_vectors` with
recall_k candidates. "Cold" clears the retriever's document cache before each query (the OS page
cache still holds the store's files); "warm" repeats queries whose documents are cached. Also prints
what moving one token matrix out of Edge costs: the whole `fetch_segments`, and turning Python lists
of rows (what Edge hands back) into an array with np.asarray vs the store's `to_array`.

    python scripts/bench_query.py --device cpu --docs 520 --tokens 2000 --dim 384   # defaults: best 4 segments
    python scripts/bench_query.py --device cpu --fetch-segments 0                    # whole candidate documents
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from indexer.embedders import Capabilities, TokenEmbedder
from indexer.store import TokenStore, open_or_create_store, to_array
from retriever import Retriever
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import Settings

MODEL = "bench-random"


class VectorOnlyEmbedder(TokenEmbedder):
    """Satisfies what Retriever reads of a TokenEmbedder (name, dim); queries come as vectors.

    For MaxSim (fetch_rank=maxsim) a query named "q<i>" has 8 token vectors scattered around query i.
    """

    name, window, stride = MODEL, 512, 256
    capabilities = Capabilities(backend="hf-pooled", vector_kind="pooled-hidden", pooling="mean", query_tokens=True)

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        raise NotImplementedError("the benchmark writes vectors directly")

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        raise NotImplementedError("the benchmark queries by vector")

    def __init__(self, dim: int, queries: np.ndarray) -> None:
        self.dim = dim
        rng = np.random.default_rng(7)
        noise = rng.standard_normal((len(queries), 8, dim)).astype(np.float32) / np.sqrt(dim)
        self.query_tokens = unit(queries[:, None, :] + noise)  # (Q, 8, dim) cosine ~0.7 with the query

    def embed_query_tokens(self, query: str) -> np.ndarray:
        return self.query_tokens[int(query[1:])]

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        raise NotImplementedError("the benchmark writes vectors directly")

    def embed_query(self, query: str) -> np.ndarray:
        raise NotImplementedError("the benchmark queries by vector")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError("the benchmark queries by vector")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_document(i: int, n: int, dim: int, target: np.ndarray, rng: np.random.Generator) -> EmbeddedDocument:
    """n random unit tokens, one 60-token run leaning towards `target` (so spans exist), one word per token.

    Pooled vectors come per 512-token window, as windowed embedding gives them: the window holding the
    run leans towards the target, so segment ranking (fetch_segments) can find the run's segment.
    """
    v = rng.standard_normal((n, dim)).astype(np.float32)
    a = int(rng.integers(0, n - 60))
    v[a : a + 60] += 0.6 * np.sqrt(dim) * target  # cosine ~0.5 with the target on the run
    v = unit(v)
    lens = np.full(n, 6)  # "w00000 " words: fixed width keeps text building vectorised
    starts = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])
    offsets = np.stack([starts, starts + lens], axis=1).astype(np.int64)
    text = " ".join(f"w{t % 100000:05d}" for t in range(n))
    pooled = unit(rng.standard_normal(dim).astype(np.float32) * 0.05 + target)  # recalled by its target query
    bounds = np.array([[w, min(w + 512, n)] for w in range(0, n, 512)])
    windows = unit(rng.standard_normal((len(bounds), dim)).astype(np.float32))
    windows[a // 512] = pooled
    doc = LoadedDocument(
        doc_id=f"doc{i:05d}", source=f"/bench/doc{i}", title=f"doc{i}", text=text, content_hash=f"{i:064x}"
    )
    return EmbeddedDocument(
        doc=doc, vectors=v, offsets=offsets, pooled=pooled, window_pooled=windows, window_bounds=bounds
    )


def build_corpus(settings: Settings, args: argparse.Namespace, queries: np.ndarray) -> TokenStore:
    store = open_or_create_store(settings.store, MODEL, args.dim, "mean")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(args.docs):
        store.write_document(random_document(i, args.tokens, args.dim, queries[i % len(queries)], rng))
    store.flush()
    n = args.docs * args.tokens
    print(
        f"corpus: {args.docs} docs x {args.tokens} tokens = {n:,} tokens at {args.dim}-d "
        f"{settings.store.storage_dtype}, "
        f"written in {time.perf_counter() - t0:.1f}s"
    )
    return store


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p))


def run_queries(r: Retriever, queries: np.ndarray, repeats: int, cold: bool) -> dict[str, list[float]]:
    """Per-stage milliseconds of every query run; cold clears the document cache first."""
    stages = ("recall", "rank_segments", "fetch", "score", "results")
    out: dict[str, list[float]] = {k: [] for k in (*stages, "total", "rows")}
    for _ in range(repeats):
        for i, q in enumerate(queries):
            if cold:
                r.fetcher.cache.clear()
            t0 = time.perf_counter()
            (resp,) = r.search_vectors([f"q{i}"], q[None])
            total = (time.perf_counter() - t0) * 1e3
            for k in stages:
                out[k].append(resp.timings_ms[k])
            out["total"].append(total)
            out["rows"].append(float(resp.rows_scored))
    return out


def report(name: str, t: dict[str, list[float]]) -> None:
    cells = "  ".join(f"{k} {pct(v, 50):7.1f} / {pct(v, 95):7.1f}" for k, v in t.items() if k != "rows")
    rows = statistics.mean(t["rows"])
    print(f"  {name:<5} p50 / p95 ms: {cells}   (n={len(t['total'])}, {rows:,.0f} token rows scored per query)")


def timed(fn: Callable[[], object], repeats: int = 5) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def conversion_costs(dim: int, n: int) -> None:
    """Milliseconds to get one n x dim float32 token matrix out of Edge, and to convert lists of its rows."""
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(store_path=Path(d), device="cpu")
        store = open_or_create_store(settings.store, MODEL, dim, "mean")
        rng = np.random.default_rng(1)
        emb = random_document(0, n, dim, unit(rng.standard_normal(dim)), rng)
        store.write_document(emb)
        fetch = timed(lambda: store.fetch_segments({"doc00000": f"{0:064x}"}))
        n_segs = len(store.fetch_segments({"doc00000": f"{0:064x}"})["doc00000"])
        store.close()
    rows = emb.vectors.tolist()  # what Edge's Record.vector holds: Python lists of floats
    old = timed(lambda: np.asarray(rows, dtype=np.float32))
    new = timed(lambda: to_array(rows, np.float32))
    print(
        f"  {n}x{dim} ({n_segs} segment(s)): whole fetch_segments {fetch:6.1f} ms; "
        f"lists -> array: np.asarray {old:6.1f} ms, fromiter {new:6.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--docs", type=int, default=520)
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per document")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "int8"])
    ap.add_argument("--recall-k", type=int, default=10)
    dflt = Settings()
    ap.add_argument(
        "--segment-tokens", type=int, default=dflt.store.segment_tokens, help="rows per segment (0: server limit)"
    )
    ap.add_argument(
        "--fetch-segments", type=int, default=dflt.recall.fetch_segments, help="best N segments (0: whole docs)"
    )
    ap.add_argument("--fetch-rank", choices=["auto", "pooled", "maxsim"], default=dflt.recall.fetch_rank)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="warm passes over the queries")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--conversion-dims", type=int, nargs="*", default=[384, 1024])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.conversion_dims:
        print("fetch anatomy, one 2000-token document (median of 5):")
        for dim in args.conversion_dims:
            conversion_costs(dim, 2000)
    rng = np.random.default_rng(42)
    queries = unit(rng.standard_normal((args.queries, args.dim)))  # (Q, dim) fixed query vectors
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(
            store_path=Path(d),
            device=args.device,
            storage_dtype=args.dtype,
            recall_k=args.recall_k,
            segment_tokens=args.segment_tokens or None,
            fetch_segments=args.fetch_segments,
            fetch_rank=args.fetch_rank,
            threshold=0.2,
            span_method="threshold",  # the span engine under test; "sentences" re-embeds with a model
        )
        store = build_corpus(settings, args, queries)
        embedder = VectorOnlyEmbedder(args.dim, queries)
        with Retriever(settings, embedder=embedder, store=store) as r:
            r.search_vectors(["q0"], queries[:1])
            n_spans = len(r.search_vectors(["q0"], queries[:1])[0].spans)
            print(
                f"recall_k={args.recall_k}, fetch_segments={args.fetch_segments} by {args.fetch_rank}, "
                f"{args.queries} query vectors, "
                f"spans for the first: {n_spans}"
            )
            report("cold", run_queries(r, queries, 1, cold=True))
            run_queries(r, queries, 1, cold=False)  # fill the cache
            report("warm", run_queries(r, queries, args.repeats, cold=False))
            cache = r.fetcher.cache
            print(f"  cache: {len(cache)} segments, {cache.nbytes / 2**20:.0f} MiB, {cache.hits} hits")


if __name__ == "__main__":
    main()
