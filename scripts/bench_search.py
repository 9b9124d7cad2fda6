"""Query latency of the real search path over a real benchmark corpus, per stage, warm and cold, batch 1 and 16,
beside a sentence index in the same engine, with what each gives (hit@1).

BENCH_DIR is a squad-format benchmark (corpus.jsonl + queries.jsonl) or a PDF one (docs/*.pdf +
queries.jsonl, read by chunkless' own readers). Its corpus is indexed once into `--store` (reused while
it holds the same texts), then the benchmark's questions run through `Retriever.search_batch`; each
answer's `SearchResponse.timings_ms` gives the stages.

The peer (`scripts/sentence_index.py`): the same texts cut into sentences by chunkless' cutter, one
vector per sentence embedded alone by the same model, in its own Edge collection folder
(`<store>-sentences`) with the HNSW float32 cosine configuration of chunkless' pooled vectors; a query
is the same model's query form, then one Edge query. Both sides count their query embedding.

- warm: one untimed pass over the questions first (decoded segments, sentence tables and the alone
  embeddings are cached), then the timed pass: a long-running process answering questions.
- cold: `Retriever.clear_caches()` before every batch (the OS page cache still holds the store's files,
  the model is loaded): what a fresh process pays per query beyond loading. The sentence index keeps no
  cache of its own, so its cold and warm passes run the same code.
- chunkless and the sentence index take turns batch by batch (same batch, one after the other), so load
  that drifts during the run weighs on both; the ratio of their p50s is the figure to read.
- batch 16: questions go 16 at a time; per-stage figures are per query (the batch's shared stages
  divided by its size), "total" is the batch's wall time divided by its size.

hit@1 (the benchmark's own measure: squad, a gold answer inside the top span; PDF, score.py's text match)
is taken from the warm batch-1 pass of each side over the same questions.

    python scripts/bench_search.py ../shared/benchmarks/squad2-dev --queries 200 --threads 2
    python scripts/bench_search.py ../shared/benchmarks/pdf-manuals-dev --store build/bench-search-pdf
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sentence_index import SentenceHit, SentenceIndex  # scripts/ is on sys.path when a script runs

from indexer.embedders import TokenEmbedder, load_embedder
from retriever import Retriever
from retriever.evaluation.benchmark import Hit, hit_at, load_benchmark
from retriever.evaluation.evaluate import index_benchmark
from retriever.evaluation.pdf_manuals import (
    PdfSpan,
    index_documents,
    is_pdf_benchmark,
    load_pdfs,
    load_queries,
    score_query,
)
from retriever.search import pages_of
from schemas.models import SearchResponse
from schemas.settings import Settings

STAGES = ["embed", "recall", "rank_segments", "fetch", "score", "rerank", "results"]
# the sentence index's two stages sit in the columns of the same work: the query embedding, the Edge query
SENTENCE_STAGES = {"embed": "embed", "recall": "search"}


@dataclass
class Corpus:
    """A benchmark as this script needs it: texts to index, questions, and how a top hit is judged."""

    name: str
    texts: dict[str, str]
    queries: list[str]
    judge_chunkless: Callable[[int, SearchResponse], bool]
    judge_sentence: Callable[[int, list[SentenceHit]], bool]
    index: Callable[[Settings, TokenEmbedder], int]


def squad_corpus(folder: Path, n: int) -> Corpus:
    bench = load_benchmark(folder)
    qs = [q for q in bench.queries if q.answerable]
    random.Random(0).shuffle(qs)
    qs = qs[:n]
    texts = {d.doc_id: d.text for d in bench.docs}

    def chunkless(i: int, resp: SearchResponse) -> bool:
        return hit_at(qs[i], [Hit(s.doc_id, s.start, s.end, s.text, s.score) for s in resp.spans], 1)

    def sentence(i: int, hits: list[SentenceHit]) -> bool:
        return hit_at(qs[i], [Hit(h.doc_id, h.start, h.end, "", h.score) for h in hits], 1)

    return Corpus(
        bench.name, texts, [q.query for q in qs], chunkless, sentence, lambda s, e: index_benchmark(bench, s, e)
    )


def pdf_corpus(folder: Path, n: int) -> Corpus:
    docs, failures = load_pdfs(folder / "docs")
    for msg in failures:
        print(f"skipped: {msg}")
    qs = load_queries(folder)
    random.Random(0).shuffle(qs)
    qs = qs[:n]
    texts = {d.doc_id: d.text for d in docs}
    starts = {d.doc_id: d.page_starts for d in docs}

    def chunkless(i: int, resp: SearchResponse) -> bool:
        spans = [PdfSpan(s.doc_id, s.text, tuple(s.pages)) for s in resp.spans]
        return score_query(qs[i], spans)["hit@1"] > 0

    def sentence(i: int, hits: list[SentenceHit]) -> bool:
        spans = [
            PdfSpan(h.doc_id, texts[h.doc_id][h.start : h.end], tuple(pages_of(starts[h.doc_id], h.start, h.end)))
            for h in hits
        ]
        return score_query(qs[i], spans)["hit@1"] > 0

    return Corpus(
        folder.name, texts, [q.query for q in qs], chunkless, sentence, lambda s, e: index_documents(docs, s, e)
    )


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p95) of `values`; (nan, nan) when empty."""
    if not values:
        return float("nan"), float("nan")
    a = np.asarray(values, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


@dataclass
class Pass:
    """One timed pass of both sides over the questions: per-query stage timings, walls and answers."""

    chunkless: list[SearchResponse]
    chunkless_walls: list[float]
    sentence_hits: list[list[SentenceHit]]
    sentence_stages: list[dict[str, float]]
    sentence_walls: list[float]


def run(r: Retriever, idx: SentenceIndex, queries: list[str], batch: int, cold: bool, top: int) -> Pass:
    """Both sides over `queries`, `batch` at a time, taking turns batch by batch."""
    p = Pass([], [], [], [], [])
    for i in range(0, len(queries), batch):
        chunk = queries[i : i + batch]
        if cold:
            r.clear_caches()
        t0 = time.perf_counter()
        p.chunkless += r.search_batch(chunk, top=top)
        p.chunkless_walls += [(time.perf_counter() - t0) * 1e3 / len(chunk)] * len(chunk)
        t0 = time.perf_counter()
        hits, embed_ms, search_ms = idx.search(chunk, top)
        p.sentence_walls += [(time.perf_counter() - t0) * 1e3 / len(chunk)] * len(chunk)
        p.sentence_hits += hits
        p.sentence_stages += [{"embed": embed_ms, "search": search_ms}] * len(chunk)
    return p


def cells(per_query: list[dict[str, float]], walls: list[float], columns: dict[str, str]) -> str:
    out = []
    for stage in STAGES:
        key = columns.get(stage)
        vals = [t[key] for t in per_query if key is not None and key in t]
        p50, p95 = percentiles(vals)
        out.append("–" if not vals else f"{p50:.1f} / {p95:.1f}")
    p50, p95 = percentiles(walls)
    return " | ".join(out) + f" | **{p50:.1f}** / {p95:.1f}"


def rows(batch: int, kind: str, p: Pass) -> list[str]:
    return [
        f"| chunkless, batch {batch}, {kind} | "
        + cells([r.timings_ms for r in p.chunkless], p.chunkless_walls, {s: s for s in STAGES})
        + " |",
        f"| sentence index, batch {batch}, {kind} | "
        + cells(p.sentence_stages, p.sentence_walls, SENTENCE_STAGES)
        + " |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, help="benchmark folder: corpus.jsonl + queries.jsonl, or docs/*.pdf + queries")
    ap.add_argument("--store", type=Path, help="store folder, reused (default: build/bench-search-<bench name>)")
    ap.add_argument("--model", help="embedding model (default: CHUNKLESS_MODEL or the packaged MiniLM)")
    ap.add_argument("--queries", type=int, default=200, help="questions timed (random, seed 0; squad: answerable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--top", type=int, default=5, help="spans (sentences) returned per query, both sides")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = (
        pdf_corpus(args.bench, args.queries) if is_pdf_benchmark(args.bench) else squad_corpus(args.bench, args.queries)
    )
    store = args.store or Path("build") / f"bench-search-{corpus.name}"
    over = {"model": args.model} if args.model else {}
    settings = Settings(store_path=store, device=args.device, **over)
    embedder = load_embedder(settings)
    t0 = time.perf_counter()
    n = corpus.index(settings, embedder)
    print(f"indexed {n} documents ({len(corpus.texts) - n} reused) in {time.perf_counter() - t0:.1f}s into {store}")
    idx = SentenceIndex(store.with_name(store.name + "-sentences"), embedder, corpus.texts)
    how = f"built in {idx.built_s:.1f}s" if idx.built_s else "reused"
    print(f"sentence index: {idx.n} sentences ({idx.indexed_vectors()} under HNSW), {how}")
    qs = corpus.queries

    header = [
        "| p50 / p95 ms per query | " + " | ".join(STAGES) + " | total |",
        "|---|" + "---|" * (len(STAGES) + 1),
    ]
    lines: list[str] = []
    p50s: dict[tuple[int, str], tuple[float, float]] = {}
    hit1: tuple[float, float] | None = None
    loads = [os.getloadavg()[0]]
    with Retriever(settings, embedder=embedder) as r:
        config = (
            f"sentence vectors {'stored' if r.store.meta.sentence_vectors else 'embedded at query time'}, "
            f"rank_shortlist {settings.recall.rank_shortlist}"
        )
        r.search_batch(qs[:1])  # first-call allocations (model, BLAS, Edge) are neither side's per-query cost
        idx.search(qs[:1])
        for batch in args.batches:
            cold = run(r, idx, qs, batch, cold=True, top=args.top)
            run(r, idx, qs, batch, cold=False, top=args.top)  # fill the caches
            warm = run(r, idx, qs, batch, cold=False, top=args.top)
            loads.append(os.getloadavg()[0])
            for kind, p in (("cold", cold), ("warm", warm)):
                lines += rows(batch, kind, p)
                p50s[batch, kind] = (percentiles(p.chunkless_walls)[0], percentiles(p.sentence_walls)[0])
                print("\n".join(lines[-2:]), flush=True)
            if batch == 1 or hit1 is None:
                hit1 = (
                    float(np.mean([corpus.judge_chunkless(i, resp) for i, resp in enumerate(warm.chunkless)])),
                    float(np.mean([corpus.judge_sentence(i, h) for i, h in enumerate(warm.sentence_hits)])),
                )
    idx.close()
    print(
        f"\n{len(qs)} questions of {corpus.name}, model {embedder.name} ({embedder.backend}), torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, 1-minute load average "
        f"{min(loads):.1f}-{max(loads):.1f}; {config}\n"
    )
    print("\n".join(header + lines))
    if hit1 is not None:
        print(
            f"\nhit@1 (top span / top sentence, same {len(qs)} questions): chunkless {hit1[0]:.3f}, "
            f"sentence index {hit1[1]:.3f}"
        )
    if (1, "warm") in p50s and (1, "cold") in p50s:
        (cw, sw), (cc, sc) = p50s[1, "warm"], p50s[1, "cold"]
        print(f"ratio p50 batch 1: warm {cw / sw:.1f} cold {cc / sc:.1f}")


if __name__ == "__main__":
    main()
