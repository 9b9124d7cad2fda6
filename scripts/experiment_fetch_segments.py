"""Quality and cost of scoring only the best segments instead of whole candidate documents.

For each segment size (rows per stored segment, set at ingest) it indexes the benchmark corpus once,
then runs the same answerable questions with fetch_segments = 0 (whole documents) and each N given,
printing hit@1, hit@5, evidence F1, words, token rows scored per query and ms per query.

    python scripts/experiment_fetch_segments.py ../shared/benchmarks/squad2-dev --work /tmp/segx \
        --segment-tokens 0 512 256 --fetch 0 2 4 8 --sample 400
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from indexer.embedders import load_embedder
from retriever import Retriever
from retriever.evaluation.benchmark import BenchQuery, Hit, load_benchmark, score
from retriever.evaluation.evaluate import index_benchmark
from schemas.settings import Settings


def run(r: Retriever, queries: list[BenchQuery], top: int = 5) -> tuple[list[list[Hit]], float, list[int]]:
    """Hits per query (batches of 64, as the evaluation runs them), seconds, and token rows scored per query."""
    hits: list[list[Hit]] = []
    rows: list[int] = []
    t0 = time.perf_counter()
    for i in range(0, len(queries), 64):
        for resp in r.search_batch([q.query for q in queries[i : i + 64]], top=top):
            hits.append([Hit(s.doc_id, s.start, s.end, s.text, s.score) for s in resp.spans])
            rows.append(resp.rows_scored)
    return hits, time.perf_counter() - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="folder for one store per segment size (reused)")
    ap.add_argument("--segment-tokens", type=int, nargs="+", default=[0, 512, 256], help="0: the server limit")
    ap.add_argument("--fetch", type=int, nargs="+", default=[0, 2, 4, 8], help="fetch_segments values (0: whole)")
    ap.add_argument("--sample", type=int, default=400, help="answerable questions (seeded sample; 0: all)")
    ap.add_argument("--recall-k", type=int, default=10)
    ap.add_argument("--rank", choices=["pooled", "maxsim"], default="pooled", help="fetch_rank")
    args = ap.parse_args()
    bench = load_benchmark(args.bench_dir)
    queries = bench.answerable(args.sample or None)
    base = Settings(device="cpu", recall_k=args.recall_k, fetch_rank=args.rank)
    embedder = load_embedder(base)
    print(f"{len(queries)} answerable questions, {len(bench.docs)} documents, recall_k {args.recall_k}, {args.rank}\n")
    print("| rows/segment | fetch_segments | rows scored/query | hit@1 | hit@5 | F1 | words | ms/query |")
    print("|---|---|---|---|---|---|---|---|")
    for seg in args.segment_tokens:
        s = base.updated(store_path=args.work / f"seg{seg}", segment_tokens=seg or None)
        index_benchmark(bench, s, embedder)
        for k in args.fetch:
            with Retriever(s.updated(fetch_segments=k), embedder=embedder) as r:
                hits, secs, scored = run(r, queries)
                n_seg = sum(h.n_segments for h in r.store.headers().values())
            sc = score(queries, hits, secs)
            label = f"{seg or 'limit'} ({n_seg} segments)"
            print(
                f"| {label} | {k or 'whole docs'} | {sum(scored) / len(scored):,.0f} | {sc.hit1:.3f} | {sc.hit5:.3f} "
                f"| {sc.f1:.3f} | {sc.words:.0f} | {sc.ms_per_query:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
