"""Segment ranking, cheaper: how often a shortlist finds what full MaxSim finds, and what each costs.

Today `rank_segments` asks Qdrant for the MaxSim of the query token vectors over every segment of the
recalled documents (its cost grows with their tokens). The variants here shortlist segments first and
run MaxSim over the shortlist only:

- `prefetch N`: one Edge query: a prefetch of the N segments nearest the pooled query (pooled segment
  vectors), then MaxSim over those N (Qdrant's multi-stage query; nothing leaves the engine between);
- `recall_k K`: fewer recalled documents, full MaxSim over their segments.

For each question of the benchmark (answerable, random, seed 0), it reports per variant: p50 ms of the
call, and how many of full MaxSim's `fetch_segments` best segments it also returns (and whether it
returns full MaxSim's best one). Quality at the end of the path is for `chunkless eval` / bench_search.

    python scripts/experiment_rank_segments.py ../shared/benchmarks/squad2-dev --store build/store-squad2-dev
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from indexer.embedders import load_embedder
from indexer.store import open_store
from retriever.evaluation.benchmark import load_benchmark
from retriever.evaluation.pdf_manuals import is_pdf_benchmark, load_queries
from schemas.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--prefetch", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if is_pdf_benchmark(args.bench):
        qs = [q.query for q in load_queries(args.bench)]
    else:
        qs = [q.query for q in load_benchmark(args.bench).queries if q.answerable]
    random.Random(0).shuffle(qs)
    qs = qs[: args.queries]
    s = Settings(store_path=args.store, device="cpu")
    e = load_embedder(s)
    store = open_store(s.store, read_only=True)
    k, recall_k = s.recall.fetch_segments, s.recall.recall_k
    times: dict[str, list[float]] = {}
    same: dict[str, list[int]] = {}
    best: dict[str, list[bool]] = {}
    load = [os.getloadavg()[0]]
    for q in qs:
        [enc] = e.encode_queries([q])
        assert enc.tokens is not None
        cands = store.recall(enc.pooled, recall_k)
        versions = {c.doc_id: c.header.version for c in cands}
        t0 = time.perf_counter()
        full = store.rank_segments(enc.tokens, versions, k)
        times.setdefault("full MaxSim", []).append((time.perf_counter() - t0) * 1e3)
        ref = {(d, i) for d, i, _ in full}
        variants = {f"prefetch {n}": n for n in args.prefetch}
        for name, n in variants.items():
            t0 = time.perf_counter()
            got = store.rank_segments(enc.tokens, versions, k, shortlist=n, pooled=enc.pooled)
            times.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
            same.setdefault(name, []).append(len(ref & {(d, i) for d, i, _ in got}))
            best.setdefault(name, []).append(bool(got) and got[0][:2] == full[0][:2])
        for kk in (5, 3):
            sub = {c.doc_id: c.header.version for c in cands[:kk]}
            t0 = time.perf_counter()
            got = store.rank_segments(enc.tokens, sub, k)
            name = f"recall_k {kk}"
            times.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
            same.setdefault(name, []).append(len(ref & {(d, i) for d, i, _ in got}))
            best.setdefault(name, []).append(bool(got) and got[0][:2] == full[0][:2])
    load.append(os.getloadavg()[0])
    store.close()
    print(f"{len(qs)} questions of {args.bench.name}, {args.store}; load average {min(load):.1f}-{max(load):.1f}")
    print(f"| variant | p50 ms | p95 ms | of full MaxSim's {k} best, found | its best found first |")
    print("|---|---:|---:|---:|---:|")
    for name, t in times.items():
        found = f"{np.mean(same[name]):.2f}" if name in same else f"{k}"
        first = f"{np.mean(best[name]):.3f}" if name in best else "1"
        print(f"| {name} | {np.percentile(t, 50):.2f} | {np.percentile(t, 95):.2f} | {found} | {first} |")


if __name__ == "__main__":
    main()
