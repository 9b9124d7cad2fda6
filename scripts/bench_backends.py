"""Embedding backends side by side in one run: ingest rate, query-embedding latency, squad2-dev quality.

Each `--model` (a model folder or name; `NAME=FOLDER` to label it, `FOLDER@cls` to set its pooling) is
loaded once, then:

(a) ingest: the whole pipeline (`indexer.ingest.ingest`: read, tokenize, embed, write to Edge) over
    `--docs` squad2-dev articles written as .txt, the models taking turns for `--repeat` rounds; document
    tokens/s, and process CPU seconds (what load moves least);
(b) query embedding, batch 1: every model encodes the same questions one at a time, taking turns per
    question, as search does it: one forward pass giving the pooled vector and the query token vectors
    (`encode_queries`, every backend; plus the torch model's int8 copy, `query_int8`, as `--torch-int8`
    asks); p50 / p95 ms;
(c) quality (unless --no-quality): the benchmark indexed into a fresh store per model and every
    answerable question (or a `--sample` of them, the same for every model) asked through
    `Retriever.search_batch`, scored as `chunkless eval --no-baselines` scores them
    (hit@1, hit@5, evidence F1, words of the top span).

    python scripts/bench_backends.py --model minilm=sentence-transformers/all-MiniLM-L6-v2 \
        onnx-fp32=build/minilm-onnx onnx-int8=build/minilm-onnx-int8 bge-int8=BGE_FOLDER@cls --torch-int8
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from indexer.embedders import (
    ModelFolder,
    OnnxTokenEmbedder,
    TokenEmbedder,
    canonical_name,
    load_embedder,
    resolve_model_path,
)
from indexer.ingest import ingest
from retriever import Retriever
from retriever.evaluation.benchmark import load_benchmark, score
from retriever.evaluation.evaluate import index_benchmark, run_chunkless
from schemas.settings import Settings


def parse_model(spec: str) -> tuple[str, str, str]:
    """label, model, pooling ("auto" unless `@cls`/`@mean`/`@last` ends the spec)."""
    label, _, model = spec.rpartition("=")
    model, _, pooling = model.partition("@")
    return label or Path(model).name, model, pooling or "auto"


Encoder = Callable[[Sequence[str]], object]


def query_encoders(
    embedders: dict[str, TokenEmbedder], settings: dict[str, Settings], torch_int8: bool
) -> dict[str, Encoder]:
    """label -> a callable encoding queries as search does (`encode_queries`: pooled + token vectors, one pass)."""
    out: dict[str, Encoder] = {}
    for label, e in embedders.items():
        out[label] = e.encode_queries
        if torch_int8 and e.backend != "onnx":  # the torch backends' int8 query copy (ModelSettings.query_int8)
            out[label + " (torch int8)"] = load_embedder(settings[label].updated(query_int8=True)).encode_queries
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", required=True, help="LABEL=MODEL[@POOLING] ...")
    ap.add_argument("--bench", type=Path, default=Path("../shared/benchmarks/squad2-dev"))
    ap.add_argument("--docs", type=int, default=4, help="articles ingested per model and round, for (a)")
    ap.add_argument("--repeat", type=int, default=2, help="ingest rounds, for (a)")
    ap.add_argument("--queries", type=int, default=100, help="questions encoded one at a time, for (b)")
    ap.add_argument("--torch-int8", action="store_true", help="(b) also times the torch int8 query encoder")
    ap.add_argument("--no-quality", action="store_true", help="skip (c)")
    ap.add_argument("--sample", type=int, help="(c) on this many answerable questions (random, seed 0; default all)")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads and ONNX Runtime intra-op threads (0: each its default)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = load_benchmark(args.bench)
    specs = [parse_model(s) for s in args.model]
    settings = {lbl: Settings(model=m, pooling=p, device="cpu") for lbl, m, p in specs}
    embedders: dict[str, TokenEmbedder] = {}
    for lbl, _, _ in specs:
        t0 = time.perf_counter()
        folder = ModelFolder.read(resolve_model_path(settings[lbl].model.model))
        if folder.backend == "onnx" and args.threads:  # load_embedder leaves ONNX Runtime its default threads
            embedders[lbl] = OnnxTokenEmbedder(
                settings[lbl], folder, canonical_name(settings[lbl].model.model), args.threads
            )
        else:
            embedders[lbl] = load_embedder(settings[lbl])
        e = embedders[lbl]
        print(
            f"{lbl}: {e.name} ({e.backend}, pooling {e.pooling}, window {e.window}) "
            f"loaded in {time.perf_counter() - t0:.1f}s"
        )
    loads = [os.getloadavg()[0]]
    print(
        f"torch threads {torch.get_num_threads()}, ONNX Runtime threads {args.threads or 'default'}, "
        f"{os.cpu_count()} CPUs\n"
    )

    with tempfile.TemporaryDirectory(prefix="bench_backends_") as t:
        tmp = Path(t)
        corpus = tmp / "corpus"
        corpus.mkdir()
        for d in bench.docs[: args.docs]:
            (corpus / f"{d.doc_id}.txt").write_text(d.text)
        rates: dict[str, list[tuple[float, float, int]]] = {lbl: [] for lbl in embedders}
        for rnd in range(args.repeat):
            for lbl, e in embedders.items():
                s = settings[lbl].updated(store_path=tmp / f"ingest-{lbl}-{rnd}")
                c0 = time.process_time()
                rep = ingest([corpus], s, embedder=e)
                assert not rep.failures, rep.failures[0]
                rates[lbl].append((rep.tokens_per_second, time.process_time() - c0, rep.tokens))
        loads.append(os.getloadavg()[0])
        print(f"(a) ingest, {args.docs} {bench.name} articles, pipeline to Edge, {args.repeat} rounds taking turns")
        print("| model | document tokens | tokens/s per round | CPU s per round |\n|---|---:|---|---|")
        for lbl, rs in rates.items():
            tps = " / ".join(f"{r[0]:,.0f}" for r in rs)
            print(f"| {lbl} | {rs[0][2]:,} | {tps} | {' / '.join(f'{r[1]:.1f}' for r in rs)} |")

        qs = [q.query for q in bench.queries if q.answerable]
        random.Random(0).shuffle(qs)
        qs = qs[: args.queries]
        encoders = query_encoders(embedders, settings, args.torch_int8)
        times: dict[str, list[float]] = {k: [] for k in encoders}
        for fn in encoders.values():
            fn([qs[0]])  # first-call allocations
        for q in qs:
            for k, fn in encoders.items():
                t0 = time.perf_counter()
                fn([q])
                times[k].append((time.perf_counter() - t0) * 1e3)
        loads.append(os.getloadavg()[0])
        print(f"\n(b) query embedding, batch 1 (pooled + token vectors, one pass), {len(qs)} questions taking turns")
        print("| encoder | p50 ms | p95 ms |\n|---|---:|---:|")
        for k, v in times.items():
            print(f"| {k} | {np.percentile(v, 50):.1f} | {np.percentile(v, 95):.1f} |")

        if not args.no_quality:
            answerable = bench.answerable(args.sample)
            print(f"\n(c) quality, {len(answerable)} answerable {bench.name} questions (chunkless eval --no-baselines)")
            print(
                "| model | hit@1 | hit@5 | evidence F1 | words | index s | query s |\n"
                "|---|---:|---:|---:|---:|---:|---:|"
            )
            for lbl, e in embedders.items():
                s = settings[lbl].updated(store_path=tmp / f"quality-{lbl}")
                t0 = time.perf_counter()
                index_benchmark(bench, s, e)
                index_s = time.perf_counter() - t0
                with Retriever(s, embedder=e) as r:
                    hits, secs = run_chunkless(r, answerable)
                sc = score(answerable, hits, secs)
                print(
                    f"| {lbl} | {sc.hit1:.3f} | {sc.hit5:.3f} | {sc.f1:.3f} | {sc.words:.1f} | {index_s:.0f} "
                    f"| {secs:.0f} |",
                    flush=True,
                )
            loads.append(os.getloadavg()[0])
    print(f"\n1-minute load average during the run: {min(loads):.1f}-{max(loads):.1f}")


if __name__ == "__main__":
    main()
