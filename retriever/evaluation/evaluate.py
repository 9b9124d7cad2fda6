"""`chunkless eval`: index a benchmark corpus, run chunkless and the baselines, print one table.

    from retriever.evaluation import evaluate, load_benchmark

    bench = load_benchmark(Path("../shared/benchmarks/squad2-dev"))
    report = evaluate(bench, settings, embedder=None, store_dir=None, sample=None, baselines=True)
    print(report.table())            # Markdown: chunkless and each baseline, Scores.HEADER columns
    report.rows["chunkless"]         # Scores
    report.results["chunkless"]      # list[list[Hit]] aligned with report.queries
    report.auc                       # AUC of top-span scores, answerable vs unanswerable (None if no unanswerable)

Documents are embedded straight from the benchmark text (no files), with doc_id = the benchmark's
doc_id, so span offsets index the benchmark text exactly. A named store holding the same corpus
(same doc_ids and content hashes) is reused without re-embedding.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from indexer.embedders import TokenEmbedder, load_embedder
from indexer.sentence_vectors import with_sentence_vectors
from indexer.store import open_or_create_store
from retriever.calibration import Abstention, abstention
from retriever.evaluation.answerability import REPORT_THRESHOLD, Answerability, answerability, auc
from retriever.evaluation.baselines import chunk_baseline, sentence_baseline
from retriever.evaluation.benchmark import Benchmark, BenchQuery, Hit, Scores, hit_at, score
from retriever.search import Retriever
from schemas.models import LoadedDocument, SearchResponse
from schemas.settings import Settings

EMBED_BATCH_CHARS = 200_000  # documents embedded per call: fills token-budgeted batches, bounds memory


def content_hash(text: str) -> str:
    """The version a benchmark document is stored under (sha256 of its text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def index_benchmark(bench: Benchmark, settings: Settings, embedder: TokenEmbedder) -> int:
    """Write the benchmark corpus into settings' collection, doc_id = the benchmark's doc_id.

    Documents already stored with the same content hash are skipped, so a named store is reused.

    Args:
        bench: the benchmark whose corpus is written.
        settings: where (store_path, collection) and how (storage layout) to write it.
        embedder: the model that embeds the documents.

    Returns:
        How many documents were (re)embedded.

    Raises:
        StoreError: the store cannot be opened or does not match the embedder.
    """
    e = embedder
    store = open_or_create_store(
        settings.store, e.name, e.dim, e.pooling, e.backend, e.vector_kind, settings.spans.boundary
    )
    try:
        live = {d: h.version for d, h in store.headers().items()}
        todo = [
            LoadedDocument(
                doc_id=d.doc_id, source=d.doc_id, title=d.title, text=d.text, content_hash=content_hash(d.text)
            )
            for d in bench.docs
            if live.get(d.doc_id) != content_hash(d.text)
        ]
        batch: list[LoadedDocument] = []
        for doc in [*todo, None]:
            if doc is not None:
                batch.append(doc)
            if batch and (doc is None or sum(len(b.text) for b in batch) >= EMBED_BATCH_CHARS):
                embedded = with_sentence_vectors(
                    embedder.embed_documents(batch), embedder, store, settings.spans.boundary
                )
                for emb in embedded:
                    store.write_document(emb)
                batch = []
        store.flush()
        if todo:
            store.build_rank_index()  # as an ingest run ends
    finally:
        store.close()
    return len(todo)


def to_hits(resp: SearchResponse) -> list[Hit]:
    """A search response's spans as benchmark hits, best first."""
    return [Hit(s.doc_id, s.start, s.end, s.text, s.score) for s in resp.spans]


NO_SPAN_SCORE = -1.0  # a question with no span at all ranks below every scored one


def top_scores(results: list[list[Hit]]) -> list[float]:
    """Each query's best span score (NO_SPAN_SCORE when it returned none)."""
    return [h[0].score if h else NO_SPAN_SCORE for h in results]


@dataclass
class EvalReport:
    """What `evaluate` measured: per method Scores and per-query hits (aligned with `queries`)."""

    queries: list[BenchQuery]
    rows: dict[str, Scores] = field(default_factory=dict)
    results: dict[str, list[list[Hit]]] = field(default_factory=dict)
    auc: float | None = None
    unanswerable: list[BenchQuery] = field(default_factory=list)
    confidence_auc: float | None = None
    abstention: Abstention | None = None
    answerability: Answerability | None = None  # confidence against hit@1, unanswerable counted as wrong

    def table(self) -> str:
        lines = [Scores.HEADER] + [s.row(name) for name, s in self.rows.items()]
        n = next(iter(self.rows.values())).n if self.rows else 0
        tail = f"\n\n{n} answerable questions"
        if self.auc is not None:
            tail += f"; unanswerable vs answerable AUC of chunkless' top-span score: {self.auc:.3f}"
            tail += f" ({len(self.unanswerable)} unanswerable)"
        if self.confidence_auc is not None:
            tail += f"\nAUC of the top span's confidence: {self.confidence_auc:.3f}"
        if self.abstention is not None:
            tail += f"; {self.abstention.line()}"
        if self.answerability is not None:
            tail += f"\n{self.answerability.line()}"
        return "\n".join(lines) + tail

    def write_results(self, path: Path, method: str = "chunkless") -> None:
        """One JSON line per query: {"query_id", "spans": [{"doc_id", "start", "end", "text", "score"}]}."""
        with path.open("w", encoding="utf-8") as f:
            for q, hits in zip(self.queries, self.results[method], strict=True):
                spans = [
                    {"doc_id": h.doc_id, "start": h.start, "end": h.end, "text": h.text, "score": h.score} for h in hits
                ]
                f.write(json.dumps({"query_id": q.query_id, "spans": spans}, ensure_ascii=False) + "\n")


def run_chunkless(
    retriever: Retriever, queries: list[BenchQuery], top: int = 5, confidences: list[float | None] | None = None
) -> tuple[list[list[Hit]], float]:
    """Hits per query through `Retriever.search_batch`.

    Args:
        retriever: an open Retriever over the benchmark's collection.
        queries: the questions, asked in batches.
        top: spans kept per question.
        confidences: when given, each query's `SearchResponse.confidence` is appended to it.

    Returns:
        Hits per query (aligned with `queries`) and the seconds it took.
    """
    t0 = time.perf_counter()
    out: list[list[Hit]] = []
    step = 64  # batched query embedding, bounded memory
    for i in range(0, len(queries), step):
        resps = retriever.search_batch([q.query for q in queries[i : i + step]], top=top)
        out += [to_hits(r) for r in resps]
        if confidences is not None:
            confidences += [r.confidence for r in resps]
    return out, time.perf_counter() - t0


def evaluate(
    bench: Benchmark,
    settings: Settings,
    embedder: TokenEmbedder | None = None,
    store_dir: Path | None = None,
    sample: int | None = None,
    baselines: bool = True,
    log: Callable[[str], None] | None = None,
) -> EvalReport:
    """Index `bench` (into store_dir, else a temporary folder), run chunkless and baselines over its questions.

    Answerable questions are measured (a random `sample` of them if given); unanswerable ones (the same
    number at most) only feed the AUC of chunkless' top-span scores.

    Args:
        bench: the benchmark (see `load_benchmark`).
        settings: model, span and storage settings chunkless runs with.
        embedder: a loaded model to reuse (default: the one settings name).
        store_dir: a store folder to (re)use; documents already there with the same text are not re-embedded.
        sample: measure this many answerable questions, drawn with a fixed seed.
        baselines: also run the 64/128/256-token chunk and sentence baselines.
        log: called with one line per finished stage.

    Returns:
        The scores per method and every query's hits.

    Raises:
        StoreError: store_dir holds a collection of another model or layout.
        ModelLoadError: the model cannot be loaded.

    Example:
        >>> report = evaluate(load_benchmark(Path("bench")), Settings(device="cpu"), baselines=False)
        >>> print(report.table())
    """
    say = log or (lambda _m: None)
    embedder = embedder or load_embedder(settings)
    answerable = bench.answerable(sample)
    unans = [q for q in bench.queries if not q.answerable]
    if sample:
        unans = unans[:sample]
    with tempfile.TemporaryDirectory(prefix="chunkless-eval-") as tmp:
        s = settings.updated(store_path=Path(store_dir) if store_dir else Path(tmp))
        t0 = time.perf_counter()
        n = index_benchmark(bench, s, embedder)
        say(f"indexed {n} documents ({len(bench.docs) - n} reused) in {time.perf_counter() - t0:.1f}s")
        report = EvalReport(queries=answerable, unanswerable=unans)
        with Retriever(s, embedder=embedder) as r:
            pos_conf: list[float | None] = []
            hits, secs = run_chunkless(r, answerable, confidences=pos_conf)
            report.rows["chunkless"], report.results["chunkless"] = score(answerable, hits, secs), hits
            say(report.rows["chunkless"].row("chunkless"))
            if unans:
                neg_conf: list[float | None] = []
                neg, _ = run_chunkless(r, unans, top=1, confidences=neg_conf)
                report.auc = auc(top_scores(hits), top_scores(neg))
                if all(c is not None for c in pos_conf + neg_conf):
                    report.confidence_auc = auc([c or 0.0 for c in pos_conf], [c or 0.0 for c in neg_conf])
                # precision and recall of abstaining at the configured threshold (0.3 when none is set)
                thr = s.spans.abstain if s.spans.abstain is not None else REPORT_THRESHOLD
                report.abstention = abstention(pos_conf, neg_conf, thr)
            right = [hit_at(q, h, 1) for q, h in zip(answerable, hits, strict=True)] + [False] * len(unans)
            thr = s.spans.abstain if s.spans.abstain is not None else REPORT_THRESHOLD
            report.answerability = answerability(pos_conf + (neg_conf if unans else []), right, thr)
    if baselines:
        for size in (64, 128, 256):
            name = f"{size}-token chunks"
            hits, secs = chunk_baseline(bench, answerable, embedder, size)
            report.rows[name], report.results[name] = score(answerable, hits, secs), hits
            say(report.rows[name].row(name))
        hits, secs = sentence_baseline(bench, answerable, embedder)
        report.rows["sentences"], report.results["sentences"] = score(answerable, hits, secs), hits
        say(report.rows["sentences"].row("sentences"))
    return report
