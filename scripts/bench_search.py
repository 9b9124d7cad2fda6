"""Query latency of the real search path over a real benchmark corpus, per stage, warm and cold, batch 1 and 16.

Indexes BENCH_DIR's corpus once into `--store` (reused while it holds the same texts), then runs the
benchmark's questions through `Retriever.search_batch` and reads each answer's `SearchResponse.timings_ms`.

- warm: one untimed pass over the questions first (decoded segments, sentence tables and the alone
  embeddings are cached), then the timed pass. This is a long-running process answering questions.
- cold: `Retriever.clear_caches()` before every batch (the OS page cache still holds the store's files).
- batch 16: questions go 16 at a time through `search_batch`; per-stage figures are per query (the
  batch's shared stages divided by its size), "total" is the batch's wall time divided by its size.

    python scripts/bench_search.py ../shared/benchmarks/squad2-dev --queries 200 --threads 2
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from retriever import Retriever
from retriever.evaluation.benchmark import load_benchmark
from retriever.evaluation.evaluate import index_benchmark
from schemas.models import SearchResponse
from schemas.settings import Settings

STAGES = ["embed", "recall", "rank_segments", "fetch", "score", "rerank", "results"]


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p95) of `values`; (nan, nan) when empty."""
    if not values:
        return float("nan"), float("nan")
    a = np.asarray(values, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def run(r: Retriever, queries: list[str], batch: int, cold: bool) -> tuple[list[SearchResponse], list[float]]:
    """Responses and per-query wall times (ms; a batch's wall time divided by its size)."""
    out: list[SearchResponse] = []
    walls: list[float] = []
    for i in range(0, len(queries), batch):
        chunk = queries[i : i + batch]
        if cold:
            r.clear_caches()
        t0 = time.perf_counter()
        out += r.search_batch(chunk)
        per = (time.perf_counter() - t0) * 1e3 / len(chunk)
        walls += [per] * len(chunk)
    return out, walls


def row(name: str, responses: list[SearchResponse], walls: list[float]) -> str:
    cells = []
    for stage in STAGES:
        vals = [resp.timings_ms[stage] for resp in responses if stage in resp.timings_ms]
        p50, p95 = percentiles(vals)
        cells.append("–" if not vals else f"{p50:.1f} / {p95:.1f}")
    p50, p95 = percentiles(walls)
    return f"| {name} | " + " | ".join(cells) + f" | **{p50:.1f}** / {p95:.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", type=Path, help="benchmark folder (corpus.jsonl + queries.jsonl)")
    ap.add_argument("--store", type=Path, default=Path("build/bench-search-store"), help="store folder, reused")
    ap.add_argument("--queries", type=int, default=200, help="answerable questions timed (random, seed 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bench = load_benchmark(args.bench)
    settings = Settings(store_path=args.store, device=args.device)
    from indexer.embedders import load_embedder

    embedder = load_embedder(settings)
    t0 = time.perf_counter()
    n = index_benchmark(bench, settings, embedder)
    print(f"indexed {n} documents ({len(bench.docs) - n} reused) in {time.perf_counter() - t0:.1f}s into {args.store}")
    qs = [q.query for q in bench.queries if q.answerable]
    random.Random(0).shuffle(qs)
    qs = qs[: args.queries]

    lines = [
        "| p50 / p95 ms per query | " + " | ".join(STAGES) + " | total |",
        "|---|" + "---|" * (len(STAGES) + 1),
    ]
    with Retriever(settings, embedder=embedder) as r:
        for batch in args.batches:
            resp, walls = run(r, qs, batch, cold=True)
            lines.append(row(f"batch {batch}, cold", resp, walls))
            run(r, qs, batch, cold=False)  # fill the caches
            resp, walls = run(r, qs, batch, cold=False)
            lines.append(row(f"batch {batch}, warm", resp, walls))
            print(lines[-2] + "\n" + lines[-1], flush=True)
    print(f"\n{len(qs)} questions of {args.bench.name}, torch threads {torch.get_num_threads()}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
