"""Measuring chunkless: span-QA benchmarks, the chunk and sentence baselines, and the storage experiment.

    from retriever.evaluation import evaluate, load_benchmark

    report = evaluate(load_benchmark(Path("../shared/benchmarks/squad2-dev")), Settings())
    print(report.table())

Modules: `benchmark` (the benchmark format and the measures), `baselines` (pre-cut pieces ranked by
cosine), `evaluate` (what `chunkless eval` runs), `storage` (what `chunkless storage-report` runs).
"""

from retriever.evaluation.answerability import auc
from retriever.evaluation.baselines import chunk_baseline, query_vectors, sentence_baseline, sentences, token_chunks
from retriever.evaluation.benchmark import (
    BenchDoc,
    Benchmark,
    BenchQuery,
    Hit,
    Scores,
    evidence_f1,
    hit_at,
    load_benchmark,
    score,
    words,
)
from retriever.evaluation.evaluate import EvalReport, evaluate, index_benchmark, run_chunkless, to_hits

__all__ = [
    "BenchDoc",
    "BenchQuery",
    "Benchmark",
    "EvalReport",
    "Hit",
    "Scores",
    "auc",
    "chunk_baseline",
    "evaluate",
    "evidence_f1",
    "hit_at",
    "index_benchmark",
    "load_benchmark",
    "query_vectors",
    "run_chunkless",
    "score",
    "sentence_baseline",
    "sentences",
    "to_hits",
    "token_chunks",
    "words",
]
