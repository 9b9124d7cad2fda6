"""Scratch prototypes of issue 22's query-path cuts, each timed beside today's path and the sentence index, with hit@1.

Over the store `bench_search.py` built for a squad-format benchmark (torch MiniLM), every variant answers
the same questions, taking turns question by question: caches cleared, a cold search, then the same
search warm. Variants (public APIs only; nothing here changes the library):

- today: the default path;
- onnx-int8 query: the same store, the query side (pooled + token vectors from one pass, and the alone
  re-embedding of candidates) run by an int8 ONNX export of the same model, through a DelegatingEmbedder;
- recall_k 5: half the candidate documents, so MaxSim segment ranking scans half the segments;
- fetch_rank pooled: segments ranked by their pooled vector (one HNSW query) instead of MaxSim;
- stored vectors: a second store with `store_sentence_vectors` (alone vectors computed at ingest);
- combo: onnx-int8 query over the stored-vectors store.

The sentence index (`sentence_index.py`) answers the same questions in the same turns, for the ratios.
A second part times what a fresh process pays before its first answer (imports, model load, store open),
in subprocesses: the part a cache surviving across processes (or a running service) would save.

    python scripts/experiment_query_cuts.py ../shared/benchmarks/squad2-dev --onnx build/minilm-onnx-int8
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sentence_index import SentenceIndex

from indexer.embedders import DelegatingEmbedder, EncodedQuery, TokenEmbedder, load_embedder
from indexer.store import open_store
from retriever import Retriever
from retriever.evaluation.benchmark import Hit, hit_at, load_benchmark
from retriever.evaluation.evaluate import index_benchmark
from schemas.settings import Settings


class OnnxQuerySide(DelegatingEmbedder):
    """The store's model for everything but the query side, which an ONNX export of it runs: one forward
    pass serves a query's pooled vector and its token vectors (`encode_queries`, what search calls)."""

    def __init__(self, inner: TokenEmbedder, onnx: TokenEmbedder) -> None:
        super().__init__(inner)
        self.onnx = onnx

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedQuery]:
        return self.onnx.encode_queries(queries)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.onnx.embed_queries(queries)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        return self.onnx.embed_query_tokens(query)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.onnx.embed_texts(texts)


def process_costs(store: Path, onnx: Path) -> None:
    """Seconds a fresh process spends before its first answer, by part (one subprocess per line)."""
    probe = """
import time, sys
t0 = time.perf_counter()
from retriever import Retriever
from indexer.embedders import load_embedder
from schemas.settings import Settings
t1 = time.perf_counter()
s = Settings(store_path=sys.argv[1], device="cpu")
e = load_embedder(s.updated(model=sys.argv[2]) if sys.argv[2] != "-" else s)
t2 = time.perf_counter()
if sys.argv[2] != "-":
    r = None
else:
    r = Retriever(s, embedder=e)
t3 = time.perf_counter()
if r is not None:
    r.search("Where is Normandy?")
    r.close()
else:
    e.embed_queries(["Where is Normandy?"])
t4 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f} {t4 - t3:.2f}")
"""
    print("\nfresh process, seconds: imports | model load | store open (Retriever) | first query (or first embed)")
    for label, model in (
        ("torch MiniLM, whole search", "-"),
        ("ONNX int8 MiniLM, load + one query embedding", str(onnx)),
    ):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", probe, str(store), model], capture_output=True, text=True, check=True
        ).stdout.split()
        print(f"| {label} | " + " | ".join(out) + f" | wall {time.perf_counter() - t0:.2f} |")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    print(f"| import torch alone | {time.perf_counter() - t0:.2f} s wall |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("--store", type=Path, default=Path("build/bench-search-squad2-dev"), help="bench_search's store")
    ap.add_argument("--onnx", type=Path, default=Path("build/minilm-onnx-int8"), help="ONNX export of the model")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = load_benchmark(args.bench)
    qs = [q for q in bench.queries if q.answerable]
    random.Random(1).shuffle(qs)  # not bench_search's sample (seed 0)
    qs = qs[: args.queries]

    base = Settings(store_path=args.store, device="cpu")
    torch_e = load_embedder(base)
    onnx_e = load_embedder(base.updated(model=str(args.onnx)))
    assert onnx_e.backend == "onnx"
    index_benchmark(bench, base, torch_e)
    sv = base.updated(store_path=args.store.with_name(args.store.name + "-sv"), store_sentence_vectors=True)
    t0 = time.perf_counter()
    n = index_benchmark(bench, sv, torch_e)
    print(f"stored-vectors store: {n} documents indexed in {time.perf_counter() - t0:.0f}s ({sv.store.store_path})")
    idx = SentenceIndex(
        args.store.with_name(args.store.name + "-sentences"), torch_e, {d.doc_id: d.text for d in bench.docs}
    )

    store = open_store(base.store, read_only=True)
    store_sv = open_store(sv.store, read_only=True)
    quick = OnnxQuerySide(torch_e, onnx_e)
    variants = {
        "today": Retriever(base, embedder=torch_e, store=store),
        "onnx-int8 query": Retriever(base, embedder=quick, store=store),
        "recall_k 5": Retriever(base.updated(recall_k=5), embedder=torch_e, store=store),
        "fetch_rank pooled": Retriever(base.updated(fetch_rank="pooled"), embedder=torch_e, store=store),
        "stored vectors": Retriever(sv, embedder=torch_e, store=store_sv),
        "combo: onnx-int8 query + stored vectors": Retriever(sv, embedder=quick, store=store_sv),
    }
    for r in variants.values():
        r.search(qs[0].query)  # first-call allocations
    idx.search([qs[0].query])
    stages = ["embed", "rank_segments", "fetch", "rerank"]
    rec: dict[str, dict[str, list[float]]] = {
        k: {x: [] for x in ["cold", "warm", "hit", *stages]} for k in [*variants, "sentence index"]
    }
    loads = [os.getloadavg()[0]]
    for q in qs:
        for name, r in variants.items():
            r.clear_caches()
            t0 = time.perf_counter()
            resp = r.search(q.query)
            rec[name]["cold"].append((time.perf_counter() - t0) * 1e3)
            for s in stages:
                rec[name][s].append(resp.timings_ms.get(s, 0.0))
            t0 = time.perf_counter()
            r.search(q.query)
            rec[name]["warm"].append((time.perf_counter() - t0) * 1e3)
            rec[name]["hit"].append(
                float(hit_at(q, [Hit(s.doc_id, s.start, s.end, s.text, s.score) for s in resp.spans], 1))
            )
        t0 = time.perf_counter()
        (hits,), _, _ = idx.search([q.query])
        ms = (time.perf_counter() - t0) * 1e3
        rec["sentence index"]["cold"].append(ms)
        rec["sentence index"]["warm"].append(ms)
        rec["sentence index"]["hit"].append(
            float(hit_at(q, [Hit(h.doc_id, h.start, h.end, "", h.score) for h in hits], 1))
        )
    loads.append(os.getloadavg()[0])
    si_cold = float(np.median(rec["sentence index"]["cold"]))
    print(
        f"\n{len(qs)} answerable {bench.name} questions (seed 1), batch 1, torch threads {torch.get_num_threads()}, "
        f"1-minute load average {min(loads):.1f}-{max(loads):.1f}; cold = caches cleared before the query"
    )
    print(
        "| variant | cold p50 | warm p50 | ratio cold / warm to sentence index | "
        + " | ".join(f"{s} p50 (cold)" for s in stages)
        + " | hit@1 |"
    )
    print("|---|---:|---:|---:|" + "---:|" * len(stages) + "---:|")
    for name, v in rec.items():
        c, w = float(np.median(v["cold"])), float(np.median(v["warm"]))
        st = " | ".join(f"{np.median(v[s]):.1f}" if v[s] else "–" for s in stages)
        print(
            f"| {name} | {c:.1f} | {w:.1f} | {c / si_cold:.1f} / {w / si_cold:.1f} | {st} | {np.mean(v['hit']):.3f} |"
        )
    store.close()
    store_sv.close()
    idx.close()
    process_costs(args.store, args.onnx)


if __name__ == "__main__":
    main()
