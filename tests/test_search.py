"""The Retriever SDK on a real MiniLM store of a few single-topic documents."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.boundaries import boundary_chars
from indexer.embedders import HFTokenEmbedder
from retriever import Retriever
from retriever.evaluation.benchmark import load_benchmark
from retriever.evaluation.evaluate import index_benchmark
from retriever.fetch import DocTokens
from retriever.methods import (
    MethodContext,
    MethodFactory,
    QueryDocs,
    SentenceCaches,
    SentenceMethod,
    SentenceVectorCache,
    SpanMethod,
    ThresholdMethod,
    ThresholdOptions,
    span_result,
    with_correction,
)
from schemas import Settings
from schemas.errors import QueryError
from schemas.models import SpanResult
from tests.support import DOCS, write_bench

QUERIES = ["What makes the dough rise?", "How many squares does a chess board have?", "What does an eruption throw?"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, minilm: HFTokenEmbedder) -> Path:
    root = tmp_path_factory.mktemp("search")
    bench = load_benchmark(write_bench(root / "bench"))
    index_benchmark(bench, Settings(store_path=root / "store", device="cpu"), minilm)
    return root / "store"


# MiniLM's smoothed relevance rarely reaches the absolute threshold on these short documents; a threshold
# relative to the best token finds spans on any scale (an experiment's option, not a setting)
RELATIVE = ThresholdMethod.with_options(ThresholdOptions(mode="relative"))


def relative(method: str) -> MethodFactory | None:
    """The threshold method with a relative threshold; None (the method the settings name) for others."""
    return RELATIVE if method == "threshold" else None


def retriever(store: Path, minilm: HFTokenEmbedder, factory: MethodFactory | None = None, **over: object) -> Retriever:
    return Retriever(Settings(store_path=store, device="cpu", **over), embedder=minilm, span_method=factory)


@pytest.mark.parametrize("method", ["threshold", "sentences"])
def test_search_batch_equals_search_and_threads_equal_serial(store: Path, minilm: HFTokenEmbedder, method: str) -> None:
    over = {"span_method": method, "rerank_k": 3, "boundary": "sentences"}
    with retriever(store, minilm, relative(method), **over) as r:
        serial = [r.search(q).spans for q in QUERIES]
        batch = [resp.spans for resp in r.search_batch(QUERIES)]
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(lambda q: r.search(q).spans, QUERIES * 4))
    assert all(serial), "every query should find a span"
    for a, b in zip(serial, batch, strict=True):
        assert [(s.doc_id, s.start, s.end) for s in a] == [(s.doc_id, s.start, s.end) for s in b]
        assert [s.score for s in a] == pytest.approx([s.score for s in b], abs=1e-5)
    assert [[(s.doc_id, s.start, s.end) for s in t] for t in threaded] == [
        [(s.doc_id, s.start, s.end) for s in t] for t in serial * 4
    ]


def test_sentence_method_returns_whole_sentences_on_topic(store: Path, minilm: HFTokenEmbedder) -> None:
    with retriever(store, minilm, span_method="sentences", boundary="sentences", rerank_k=4) as r:
        spans = r.search("What makes the dough rise?", top=3).spans
    top = spans[0]
    assert top.doc_id == "bread" and "carbon dioxide" in top.text
    assert top.text == DOCS["bread"][top.start : top.end] and top.text.endswith(".")
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)


@pytest.mark.parametrize(
    ("method", "rank"), [("threshold", "pooled"), ("sentences", "pooled"), ("sentences", "maxsim")]
)
def test_fetching_only_the_best_segments_keeps_text_exact(
    tmp_path: Path, minilm: HFTokenEmbedder, method: str, rank: str
) -> None:
    settings = Settings(store_path=tmp_path / "store", device="cpu", segment_tokens=16)
    index_benchmark(load_benchmark(write_bench(tmp_path / "bench")), settings, minilm)
    over = {
        "span_method": method,
        "rerank_k": 4,
        "fetch_segments": 2,
        "min_span_size": 4,
        "fetch_rank": rank,
    }
    with Retriever(settings.updated(**over), embedder=minilm, span_method=relative(method)) as r:
        assert all(h.n_segments >= 3 for h in r.store.headers().values())
        spans = r.search("What makes the dough rise?").spans
        assert len(r.fetcher.cache) == 2  # two segments moved, not three documents
    assert spans and spans[0].doc_id == "bread"
    for sp in spans:  # offsets stay absolute although the scored text starts mid-document
        assert sp.text == DOCS[sp.doc_id][sp.start : sp.end]


def test_sentences_cut_by_a_fetched_runs_edge_come_back_whole(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    """16-row segments cut nearly every sentence: spans are finished from the unfetched neighbours' text."""
    settings = Settings(store_path=tmp_path / "store", device="cpu", segment_tokens=16)
    index_benchmark(load_benchmark(write_bench(tmp_path / "bench")), settings, minilm)
    over = {"span_method": "sentences", "rerank_k": 6, "fetch_segments": 2, "boundary": "sentences"}
    with Retriever(settings.updated(**over), embedder=minilm) as r:
        spans = r.search("What makes the dough rise?", top=6).spans
        heads = r.store.headers()
        fetched = {
            (d, i): h.version
            for d, h in heads.items()
            for i in range(h.n_segments)
            if (d, h.version, i) in r.fetcher.cache
        }
        all_segs = r.store.segment_texts({(d, h.version): list(range(h.n_segments)) for d, h in heads.items()})
    assert spans and spans[0].doc_id == "bread"
    runs: dict[str, list[list[int]]] = {}  # per document, fetched char ranges with touching ones merged
    for (d, i), (c0, t) in sorted(all_segs.items()):
        if (d, i) in fetched:
            rs = runs.setdefault(d, [])
            if rs and rs[-1][1] == c0:
                rs[-1][1] = c0 + len(t)
            else:
                rs.append([c0, c0 + len(t)])
    outside = 0
    for sp in spans:
        text = DOCS[sp.doc_id]
        assert sp.text == text[sp.start : sp.end]
        ends = boundary_chars(text, "sentences")
        before = text[: sp.start].rstrip()
        assert not before or ends[len(before) - 1], f"{sp.text!r} starts mid-sentence"
        assert sp.end == len(text) or ends[sp.end - 1], f"{sp.text!r} ends mid-sentence"
        outside += not any(a <= sp.start and sp.end <= b for a, b in runs.get(sp.doc_id, []))
    assert outside, "no span needed a neighbour's text: the test lost its point"


def test_length_penalty_prefers_shorter_sentences(store: Path, minilm: HFTokenEmbedder) -> None:
    """A penalty far above any cosine gap orders spans by length; the default leaves the cosine order."""
    q = "What makes the dough rise?"
    with retriever(store, minilm, rerank_k=8, length_penalty=100.0) as r:
        short = r.search(q, top=6).spans
    with retriever(store, minilm, rerank_k=8) as r:
        plain = r.search(q, top=6).spans
    words = [len(sp.text.split()) for sp in short]
    assert words == sorted(words) and len(set(words)) > 1
    assert [sp.score for sp in short] == sorted((sp.score for sp in short), reverse=True)
    assert [len(sp.text.split()) for sp in plain] != words, "the penalty changed nothing"


def test_filter_restricts_documents_and_rejects_unknown_fields(store: Path, minilm: HFTokenEmbedder) -> None:
    with retriever(store, minilm, span_method="sentences", boundary="sentences") as r:
        only = r.search("What makes the dough rise?", filter={"doc_id": ["chess", "volcano"]}).spans
        assert only and {s.doc_id for s in only} <= {"chess", "volcano"}
        with pytest.raises(QueryError, match="not supported"):
            r.search("dough", filter={"title": "Bread"})
        with pytest.raises(QueryError, match="empty"):
            r.search("   ")


def test_explain_shapes(store: Path, minilm: HFTokenEmbedder) -> None:
    with retriever(store, minilm) as r:
        ex = r.explain("How many squares does a chess board have?", "chess")
        n = len(ex.starts)
        assert n > 20 and ex.raw.shape == ex.smoothed.shape == ex.ends.shape == (n,)
        assert np.all(np.diff(ex.starts) >= 0) and ex.text == DOCS["chess"]
        assert ex.smoothed.max() <= ex.raw.max() + 1e-6  # smoothing averages, never exceeds the peak
        with pytest.raises(QueryError, match="not in collection"):
            r.explain("x", "nope")


def test_maxsim_recall_reorders_candidates_only(store: Path, minilm: HFTokenEmbedder) -> None:
    q = "How many squares does a chess board have?"
    with retriever(store, minilm, recall_maxsim=True) as r:
        got = r.recall(q, r.embed_queries([q])[0])
    assert got[0].doc_id == "chess" and sorted(c.doc_id for c in got) == sorted(DOCS)


def test_original_method_stays_reachable(store: Path, minilm: HFTokenEmbedder) -> None:
    with retriever(store, minilm, span_method="threshold", boundary="separators", threshold=0.99) as r:
        assert r.search("What makes the dough rise?").spans == []  # nothing clears an absolute 0.99
    with retriever(store, minilm, RELATIVE, span_method="threshold") as r:
        ex = r.explain("What makes the dough rise?", "bread")
        assert ex.threshold == pytest.approx(float(ex.smoothed.max()) - 0.05, abs=1e-5)  # the method's own
        assert ex.spans and all(s.doc_id == "bread" for s in ex.spans)
    with retriever(store, minilm, span_method="sentences") as r:  # no token signal: the threshold method's
        assert r.explain("What makes the dough rise?", "bread").threshold == pytest.approx(0.39)


def test_sentence_vector_cache_embeds_each_text_once() -> None:
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.array([[float(len(t)), 1.0] for t in texts])

    cache = SentenceVectorCache(max_entries=2)
    first = cache.embed(["ab", "c", "ab"], embed)
    assert calls == [["ab", "c"]] and first[:, 0].tolist() == [2.0, 1.0, 2.0]
    cache.embed(["c", "dddd"], embed)  # "c" cached; "dddd" evicts the least recently used "ab"
    cache.embed(["ab"], embed)
    assert calls == [["ab", "c"], ["dddd"], ["ab"]]


# --- span methods as strategies ----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls"), [("sentences", SentenceMethod), ("threshold", ThresholdMethod)])
def test_span_method_setting_picks_the_strategy(store: Path, minilm: HFTokenEmbedder, name: str, cls: type) -> None:
    over = {"span_method": name, "rerank_k": 4, "threshold": 0.1}  # an absolute threshold MiniLM reaches here
    with retriever(store, minilm, **over) as r:
        assert type(r.method) is cls
        resp = r.search("How many squares does a chess board have?", top=2)
    assert resp.spans and resp.spans[0].doc_id == "chess" and len(resp.spans) <= 2
    stages = {"embed", "recall", "rank_segments", "fetch", "score", "rerank", "results"}
    assert stages == set(resp.timings_ms) and all(v >= 0 for v in resp.timings_ms.values())
    assert resp.rows_scored > 0


@pytest.mark.parametrize("method", ["threshold", "sentences"])
def test_search_vectors_equals_search(store: Path, minilm: HFTokenEmbedder, method: str) -> None:
    over = {"span_method": method, "rerank_k": 3}
    with retriever(store, minilm, relative(method), **over) as r:
        searched = r.search_batch(QUERIES, top=3, filter={"doc_id": ["bread", "chess"]})
        by_vector = r.search_vectors(QUERIES, r.embed_queries(QUERIES), top=3, filter={"doc_id": ["bread", "chess"]})
        assert r.search_vectors([], np.zeros((0, 384), np.float32)) == []
        with pytest.raises(QueryError, match="query vectors"):
            r.search_vectors(QUERIES, r.embed_queries(QUERIES)[:1])
    assert [a.spans for a in searched] == [b.spans for b in by_vector]
    assert any(a.spans for a in searched) and "embed" not in by_vector[0].timings_ms


class FirstTokens(SpanMethod[list[tuple[int, float]]]):
    """A plugged-in method: per document, its first few tokens, scored by the document's mean relevance."""

    def __init__(self, ctx: MethodContext) -> None:
        self.scorer = ctx.scorer
        self.batches: list[int] = []

    def score(self, query: QueryDocs, top: int | None) -> list[tuple[int, float]]:
        r, doc_starts = self.scorer.relevance(query.q, query.docs)
        bounds = doc_starts.tolist()
        means = [float(r[a:b].mean()) for a, b in itertools.pairwise(bounds)]
        return sorted(enumerate(means), key=lambda x: -x[1])

    def rerank(self, batch: list[list[tuple[int, float]]]) -> None:
        self.batches.append(len(batch))

    def results(self, state: list[tuple[int, float]], query: QueryDocs, top: int | None) -> list[SpanResult]:
        out = []
        for i, score in state[:top]:
            d = query.docs[i]
            out.append(span_result(d, int(d.starts[0]), int(d.ends[min(4, d.n - 1)]), score))
        return out


def test_a_custom_method_plugs_in_through_the_interface(store: Path, minilm: HFTokenEmbedder) -> None:
    with Retriever(Settings(store_path=store, device="cpu"), embedder=minilm, span_method=FirstTokens) as r:
        assert isinstance(r.method, FirstTokens)
        out = r.search_batch(QUERIES, top=2)
        assert r.method.batches == [len(QUERIES)]  # one rerank call for the whole batch
    for resp in out:
        assert len(resp.spans) == 2 and resp.spans[0].score >= resp.spans[1].score
        for sp in resp.spans:
            assert sp.start == 0 and sp.text == DOCS[sp.doc_id][: sp.end] and len(sp.text.split()) >= 3
    assert out[1].spans[0].doc_id == "chess"  # the chess question's best document by mean relevance


@pytest.mark.parametrize("method", ["threshold", "sentences"])
def test_relevance_correction_changes_what_is_found(store: Path, minilm: HFTokenEmbedder, method: str) -> None:
    seen: list[tuple[int, int]] = []

    def sink_bread(r: torch.Tensor, q: torch.Tensor, docs: list[DocTokens]) -> torch.Tensor:
        """Every token of the bread document far below any cosine: its sentences can no longer win."""
        seen.append((r.numel(), sum(d.n for d in docs)))
        bread = torch.cat([torch.full((d.n,), d.doc_id == "bread") for d in docs])
        return torch.where(bread, torch.full_like(r, -1.0), r)

    over = {"span_method": method, "rerank_k": 4}
    q = "What makes the dough rise?"
    with retriever(store, minilm, relative(method), **over) as r:
        plain = r.search(q).spans
    with retriever(store, minilm, with_correction(sink_bread, relative(method)), **over) as r:
        corrected = r.search(q).spans
        assert r.scorer.correction is None  # the Retriever's own scorer is the product's
    assert plain and plain[0].doc_id == "bread"
    assert corrected and corrected[0].doc_id != "bread"
    assert seen and all(n == m for n, m in seen)


def test_shared_sentence_caches_embed_each_sentence_once(store: Path, minilm: HFTokenEmbedder) -> None:
    caches = SentenceCaches()

    def shared(ctx: MethodContext) -> SentenceMethod:
        return SentenceMethod(ctx, caches)

    settings = Settings(store_path=store, device="cpu", rerank_k=4)
    with Retriever(settings, embedder=minilm, span_method=shared) as r:
        first = r.search_batch(QUERIES)
    n = len(caches.vectors)
    assert n >= len(QUERIES)
    with Retriever(settings.updated(rerank_weight=0.5), embedder=minilm, span_method=shared) as r:
        again = r.search_batch(QUERIES)
    assert len(caches.vectors) == n  # the second retriever re-embedded nothing
    assert [[s.text for s in a.spans] for a in first] and all(a.spans for a in again)
