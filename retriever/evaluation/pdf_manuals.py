"""`chunkless eval` on a PDF benchmark (the pdf-manuals format): PDFs in, spans judged by text and pages.

A PDF benchmark folder holds `docs/*.pdf` and `queries.jsonl` ({"query_id", "query", "kind", "doc",
"gold_text", "gold_pages"}), and no corpus.jsonl. The PDFs go through the real loader
(indexer.reading.load_file: reading text + structure), are embedded into a store, and every query
is answered by chunkless and by the 64-token chunk and sentence baselines cut from the same
reading texts. Measures (the benchmark's score.py, reimplemented here and checked against it):

- hit@1, hit@5: a top-k span is from the right document and has word F1 >= 0.3 with the gold
  text or contains 12 consecutive gold words (fewer when the gold is shorter);
- page@1, page@5: the top span (one of the top 5) is from the right document and its pages meet the gold pages;
- wF1: SQuAD bag-of-words F1 of the top span with the gold text (0 for a wrong document);
- words: whitespace words of the top span.
Text is normalised on both sides: NFKC, lower case, Markdown link targets and short HTML tags
dropped, punctuation/symbols/marks/separators/controls to spaces; articles dropped for F1.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexer.embedders import TokenEmbedder, load_embedder
from indexer.reading import load_file
from indexer.sentence_vectors import with_sentence_vectors
from indexer.store import open_or_create_store
from retriever.evaluation.answerability import REPORT_THRESHOLD, Answerability, answerability
from retriever.evaluation.baselines import rank_pieces, sentences, token_chunks
from retriever.evaluation.benchmark import BenchDoc, Benchmark, BenchQuery
from schemas.errors import InputError
from schemas.models import LoadedDocument
from schemas.settings import Settings

F1_MIN = 0.3
RUN = 12
TOPK = 5
_LINK = re.compile(r"\]\([^)\s]*\)")
_TAG = re.compile(r"<[^>\s]{1,20}>")
_ARTICLES = {"a", "an", "the"}
HEADER = "| method | n | hit@1 | hit@5 | page@1 | page@5 | wF1 | words |\n|---|---:|---:|---:|---:|---:|---:|---:|"


def is_pdf_benchmark(path: Path) -> bool:
    """A folder in the PDF format: docs/ with PDFs and queries.jsonl, and no corpus.jsonl."""
    return (
        (path / "queries.jsonl").is_file()
        and (path / "docs").is_dir()
        and not (path / "corpus.jsonl").exists()
        and any((path / "docs").glob("*.pdf"))
    )


@dataclass(frozen=True)
class PdfQuery:
    query_id: str
    query: str
    kind: str
    doc: str  # file name in docs/
    gold_text: str
    gold_pages: tuple[int, ...]


@dataclass(frozen=True)
class PdfSpan:
    """One returned span as the scorer sees it: document, text, 1-based physical pages."""

    doc_id: str
    text: str
    pages: tuple[int, ...]
    section: str | None = None
    page_labels: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        out: dict = {"doc_id": self.doc_id, "text": self.text, "pages": list(self.pages)}
        if self.section is not None:
            out["section"] = self.section
        if self.page_labels is not None:
            out["page_labels"] = list(self.page_labels)
        return out


def load_queries(bench_dir: Path) -> list[PdfQuery]:
    """The benchmark's queries; raises InputError naming the line and field that is wrong."""
    path = bench_dir / "queries.jsonl"
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                out.append(
                    PdfQuery(
                        str(r["query_id"]),
                        str(r["query"]),
                        str(r.get("kind", "")),
                        str(r["doc"]),
                        str(r["gold_text"]),
                        tuple(int(p) for p in r.get("gold_pages", [])),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}:{n}", f"bad query line ({type(e).__name__}: {e}); fix or remove it") from e
    return out


# --- the measures (score.py) -----------------------------------------------------------------------
def normalize_words(text: str, drop_articles: bool = True) -> list[str]:
    t = unicodedata.normalize("NFKC", text or "")
    t = _TAG.sub(" ", _LINK.sub(" ", t)).lower()
    t = "".join(" " if unicodedata.category(ch)[0] in "PSMZC" else ch for ch in t)
    words = t.split()
    return [w for w in words if w not in _ARTICLES] if drop_articles else words


def word_f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return 0.0
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def doc_key(name: str) -> str:
    b = str(name or "").replace("\\", "/").rsplit("/", 1)[-1].strip().lower()
    return b[:-4] if b.endswith(".pdf") else b


def score_query(q: PdfQuery, spans: Sequence[PdfSpan]) -> dict[str, float]:
    """Per-query measures of `spans` (best first; the first TOPK count)."""
    gold = normalize_words(q.gold_text)
    gold_seq = normalize_words(q.gold_text, drop_articles=False)
    run = min(RUN, len(gold_seq))
    grams = _ngrams(gold_seq, run) if run else set()
    hits = []
    for s in spans[:TOPK]:
        ok = doc_key(s.doc_id) == doc_key(q.doc) and (
            word_f1(normalize_words(s.text), gold) >= F1_MIN
            or bool(grams & _ngrams(normalize_words(s.text, drop_articles=False), run))
        )
        hits.append(ok)
    top = spans[0] if spans else None
    top_doc = top is not None and doc_key(top.doc_id) == doc_key(q.doc)
    on_page = [doc_key(s.doc_id) == doc_key(q.doc) and bool(set(s.pages) & set(q.gold_pages)) for s in spans[:TOPK]]
    return {
        "hit@1": float(any(hits[:1])),
        "hit@5": float(any(hits[:5])),
        "page@1": float(any(on_page[:1])),
        "page@5": float(any(on_page[:5])),
        "wF1": word_f1(normalize_words(top.text), gold) if top is not None and top_doc else 0.0,
        "words": float(len(top.text.split())) if top is not None else 0.0,
    }


@dataclass
class PdfScores:
    n: int
    means: dict[str, float]

    def row(self, name: str) -> str:
        m = self.means
        return (
            f"| {name} | {self.n} | {m['hit@1']:.3f} | {m['hit@5']:.3f} | {m['page@1']:.3f} | {m['page@5']:.3f} "
            f"| {m['wF1']:.3f} | {m['words']:.1f} |"
        )


def score(queries: Sequence[PdfQuery], results: Sequence[Sequence[PdfSpan]]) -> PdfScores:
    per = [score_query(q, r) for q, r in zip(queries, results, strict=True)]
    keys = ["hit@1", "hit@5", "page@1", "page@5", "wF1", "words"]
    n = len(per)
    return PdfScores(n, {k: sum(p[k] for p in per) / n if n else 0.0 for k in keys})


# --- running it ---------------------------------------------------------------------------------------
@dataclass
class PdfEvalReport:
    queries: list[PdfQuery]
    rows: dict[str, PdfScores] = field(default_factory=dict)
    results: dict[str, list[list[PdfSpan]]] = field(default_factory=dict)
    answerability: Answerability | None = None  # chunkless' confidence against its hit@1

    def table(self) -> str:
        lines = [HEADER]
        for name, s in self.rows.items():
            lines.append(s.row(name))
            if name == "chunkless":
                for kind in sorted({q.kind for q in self.queries}):
                    idx = [i for i, q in enumerate(self.queries) if q.kind == kind]
                    sub = score([self.queries[i] for i in idx], [self.results[name][i] for i in idx])
                    lines.append(sub.row(f"— chunkless, kind {kind}"))
        tail = f"\n\n{self.answerability.line()}" if self.answerability is not None else ""
        return "\n".join(lines) + tail

    def write_results(self, path: Path, method: str = "chunkless") -> None:
        """score.py's RESULTS.jsonl: {"query_id", "spans": [{"doc_id", "text", "pages", ...}]} per query."""
        with path.open("w", encoding="utf-8") as f:
            for q, spans in zip(self.queries, self.results[method], strict=True):
                row = {"query_id": q.query_id, "spans": [s.to_json() for s in spans]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_pdfs(docs_dir: Path) -> tuple[list[LoadedDocument], list[str]]:
    """Every PDF of `docs_dir` through the real loader (doc_id = file name); failures as messages."""
    docs, failures = [], []
    for f in sorted(docs_dir.glob("*.pdf")):
        try:
            docs.append(load_file(f, f.name))
        except InputError as e:
            failures.append(str(e))
    return docs, failures


def _all_stored(docs_dir: Path, settings: Settings, store_dir: Path) -> bool:
    """Whether the store at `store_dir` holds every PDF of `docs_dir` at its current version (file hash)."""
    from indexer.admit import file_hash
    from indexer.store import open_store
    from schemas.errors import StoreError

    if not (settings.updated(store_path=store_dir).store.collection_path).is_dir():
        return False
    try:
        store = open_store(settings.updated(store_path=store_dir).store, read_only=True)
    except StoreError:
        return False
    try:
        live = {d: h.version for d, h in store.headers().items()}
    finally:
        store.close()
    return all(live.get(f.name) == file_hash(f) for f in sorted(docs_dir.glob("*.pdf")))


def index_documents(docs: list[LoadedDocument], settings: Settings, embedder: TokenEmbedder) -> int:
    """Embed and store the documents not already stored at the same version; returns how many."""
    e = embedder
    store = open_or_create_store(
        settings.store, e.name, e.dim, e.pooling, e.backend, e.vector_kind, settings.spans.boundary
    )
    try:
        live = {d: h.version for d, h in store.headers().items()}
        todo = [d for d in docs if live.get(d.doc_id) != d.content_hash]
        for d in todo:
            # with the sentence vectors `chunkless index` stores (when the collection keeps them)
            embs = with_sentence_vectors(embedder.embed_documents([d]), embedder, store, settings.spans.boundary)
            for emb in embs:
                store.write_document(emb)
        store.flush()
        if todo:
            store.build_rank_index()  # as an ingest run ends
    finally:
        store.close()
    return len(todo)


def _pages(page_starts: list[int], start: int, end: int) -> tuple[int, ...]:
    from retriever.search import pages_of

    return tuple(pages_of(page_starts, start, end))


def evaluate_pdf_manuals(
    bench_dir: Path,
    settings: Settings,
    embedder: TokenEmbedder | None = None,
    store_dir: Path | None = None,
    sample: int | None = None,
    baselines: bool = True,
    log: Callable[[str], None] | None = None,
) -> PdfEvalReport:
    """Ingest the benchmark's PDFs, answer its queries with chunkless and the baselines, score them."""
    from retriever.search import Retriever

    say = log or (lambda _m: None)
    embedder = embedder or load_embedder(settings)
    queries = load_queries(bench_dir)
    if sample and sample < len(queries):
        queries = random.Random(0).sample(queries, sample)
    t0 = time.perf_counter()
    if store_dir is not None and not baselines and _all_stored(bench_dir / "docs", settings, Path(store_dir)):
        # reading a PDF costs seconds a page; a named store that holds every file's version already
        # needs no reading when no baseline is cut from the text
        docs: list[LoadedDocument] = []
        failures: list[str] = []
        say("every PDF is in the store at its version: not read again")
    else:
        docs, failures = load_pdfs(bench_dir / "docs")
    for msg in failures:
        say(f"skipped: {msg}")
    say(f"read {len(docs)} PDFs in {time.perf_counter() - t0:.1f}s")
    report = PdfEvalReport(queries=queries)
    with tempfile.TemporaryDirectory(prefix="chunkless-eval-") as tmp:
        s = settings.updated(store_path=Path(store_dir) if store_dir else Path(tmp))
        t0 = time.perf_counter()
        n = index_documents(docs, s, embedder)
        say(f"indexed {n} documents ({len(docs) - n} reused) in {time.perf_counter() - t0:.1f}s")
        with Retriever(s, embedder=embedder) as r:
            out: list[list[PdfSpan]] = []
            confidences: list[float | None] = []
            for i in range(0, len(queries), 64):
                for resp in r.search_batch([q.query for q in queries[i : i + 64]], top=TOPK):
                    confidences.append(resp.confidence)
                    out.append(
                        [
                            PdfSpan(
                                sp.doc_id,
                                sp.text,
                                tuple(sp.pages),
                                sp.section,
                                tuple(sp.page_labels) if sp.page_labels is not None else None,
                            )
                            for sp in resp.spans
                        ]
                    )
        report.results["chunkless"] = out
        report.rows["chunkless"] = score(queries, out)
        say(report.rows["chunkless"].row("chunkless"))
        right = [score_query(q, spans)["hit@1"] == 1.0 for q, spans in zip(queries, out, strict=True)]
        thr = s.spans.abstain if s.spans.abstain is not None else REPORT_THRESHOLD
        report.answerability = answerability(confidences, right, thr)
    if baselines:
        bench = Benchmark(
            name=bench_dir.name,
            docs=[BenchDoc(d.doc_id, d.title, d.text) for d in docs],
            queries=[BenchQuery(q.query_id, q.query, q.doc, [], None) for q in queries],
        )
        starts = {d.doc_id: d.page_starts for d in docs}
        for name, pieces in (
            ("64-token chunks", token_chunks(bench, embedder, 64)),
            ("sentences", sentences(bench)),
        ):
            hits, _ = rank_pieces(bench, bench.queries, embedder, pieces, top=TOPK)
            res = [[PdfSpan(h.doc_id, h.text, _pages(starts[h.doc_id], h.start, h.end)) for h in hs] for hs in hits]
            report.results[name], report.rows[name] = res, score(queries, res)
            say(report.rows[name].row(name))
    return report
