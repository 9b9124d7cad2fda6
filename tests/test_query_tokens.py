"""Token relevance from query token vectors for multivector models (ColBERT, Jina v4), and none of it for
pooled-hidden ones.

Random tiny models cannot show quality: these tests check the math against numpy references (each
document token's best match among the query tokens, MaxSim restricted to a sentence), that the CPU and
torch paths agree, that a search over a real store of a tiny ColBERT or Jina-v4 folder returns what the
reference computes from the fetched rows and the query tokens, and that pooled-hidden models keep the
pooled formula.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.embedders import HFTokenEmbedder, TokenEmbedder, load_embedder, resolve_model_path
from retriever import Retriever
from retriever.evaluation.benchmark import load_benchmark
from retriever.evaluation.evaluate import index_benchmark
from retriever.fetch import DocTokens
from retriever.methods import Scorer, ThresholdMethod, ThresholdOptions
from retriever.relevance import (
    gemv_blocks,
    relevance_smoothed,
    segment_max,
    sentence_maxsim,
    similarities,
    token_relevance,
)
from retriever.sentence_table import SentenceTables
from retriever.spans import smooth
from schemas.errors import QueryError
from schemas.models import SpanResult
from schemas.settings import Settings
from tests.model_folders import build_colbert, build_jina_v4_like
from tests.support import DOCS, write_bench

MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
QUERY = "What makes the dough rise?"
# the in-context score only: no re-ranking by sentence vectors, no BM25, no length penalty
IN_CONTEXT = {"rerank_k": 0, "lexical_first": 0.0, "lexical_weight": 0.0, "length_penalty": 0.0}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def blocks_and_queries(seed: int, dim: int = 16, m: int = 5) -> tuple[list[torch.Tensor], np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [0, 1, 7, 40, 0, 333, 1000, 17, 2, 600]
    blocks = [torch.from_numpy(unit(rng.normal(size=(n, dim)))) if n else torch.zeros(0, dim) for n in lengths]
    return blocks, unit(rng.normal(size=(m, dim)))


def ref_maxsim(blocks: list[torch.Tensor], qs: np.ndarray) -> np.ndarray:
    """numpy reference: r_j = max_i qs_i . d_j."""
    d = np.concatenate([b.numpy() for b in blocks]).astype(np.float64)
    return (d @ qs.astype(np.float64).T).max(axis=1)


# --- the math ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("floor", [0, 10**9])  # the split BLAS row-range path, and torch
def test_token_relevance_is_each_rows_best_query_token(floor: int) -> None:
    blocks, qs = blocks_and_queries(1)
    got = token_relevance(blocks, torch.from_numpy(qs), min_split_rows=floor).numpy()
    np.testing.assert_allclose(got, ref_maxsim(blocks, qs), rtol=1e-5, atol=1e-5)
    torch_only = token_relevance(blocks, torch.from_numpy(qs), use_numpy=False).numpy()
    np.testing.assert_allclose(got, torch_only, rtol=1e-5, atol=1e-5)
    # one query vector is the pooled formula
    one = token_relevance(blocks, torch.from_numpy(qs[:1]), min_split_rows=floor).numpy()
    np.testing.assert_allclose(one, gemv_blocks(blocks, torch.from_numpy(qs[0])).numpy(), rtol=1e-5, atol=1e-5)


def test_token_relevance_of_half_precision_and_strided_rows() -> None:
    blocks, qs = blocks_and_queries(2)
    half = [b.half() for b in blocks]  # the default float16 storage: the torch path
    strided = [torch.cat([b, b], 1)[:, : b.shape[1]] for b in blocks]  # non-contiguous views: the torch path
    want = ref_maxsim([b.float() for b in half], qs)
    np.testing.assert_allclose(token_relevance(half, torch.from_numpy(qs)).numpy(), want, rtol=1e-4, atol=1e-4)
    got = token_relevance(strided, torch.from_numpy(qs), min_split_rows=0).numpy()
    np.testing.assert_allclose(got, ref_maxsim(blocks, qs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", [4.0, 1.3, 0.1])
def test_fused_cpu_maxsim_and_smoothing_match_torch(sigma: float) -> None:
    blocks, qs = blocks_and_queries(3)
    doc_starts = torch.tensor(np.cumsum([0, *[len(b) for b in blocks]]))
    r, s = relevance_smoothed(blocks, torch.from_numpy(qs), doc_starts, sigma, min_split_rows=0, chunk_rows=37)
    want = torch.from_numpy(ref_maxsim(blocks, qs).astype(np.float32))
    np.testing.assert_allclose(r.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.numpy(), smooth(want, doc_starts, sigma).numpy(), rtol=1e-5, atol=1e-5)
    r2, s2 = relevance_smoothed(blocks, torch.from_numpy(qs), doc_starts, sigma, min_split_rows=10**9)
    np.testing.assert_allclose(r2.numpy(), r.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2.numpy(), s.numpy(), rtol=1e-5, atol=1e-5)


def test_sentence_maxsim_is_maxsim_restricted_to_the_sentence() -> None:
    blocks, qs = blocks_and_queries(4)
    n = sum(len(b) for b in blocks)
    rng = np.random.default_rng(4)
    sid = np.cumsum(rng.random(n) < 0.1)  # sentences of random lengths, crossing block borders
    sid -= sid[0]
    s = int(sid[-1]) + 1
    d = np.concatenate([b.numpy() for b in blocks]).astype(np.float64)
    sims = d @ qs.astype(np.float64).T  # (N, m)
    want = np.array([sims[sid == k].max(axis=0).mean() for k in range(s)])
    for group_rows in (1, 100, 10**9):  # a block at a time, groups of blocks, all of them at once
        got = sentence_maxsim(blocks, torch.from_numpy(qs), torch.from_numpy(sid), s, group_rows).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    whole = segment_max(similarities(blocks, torch.from_numpy(qs)), torch.from_numpy(sid), s).mean(1)
    np.testing.assert_allclose(whole.numpy(), want, rtol=1e-5, atol=1e-5)


# --- the scorer chooses by vector kind ----------------------------------------------------------------------
def fake_docs(blocks: list[torch.Tensor], ends_every: int = 9) -> list[DocTokens]:
    """DocTokens over the blocks (one document each), every `ends_every`-th token ending a sentence."""
    from indexer.store import DocHeader

    docs = []
    for k, b in enumerate(blocks):
        n = len(b)
        header = DocHeader(
            doc_id=f"d{k}", version="v", source=f"d{k}", title="", n_tokens=n, n_rows=n, n_segments=1, text_len=2 * n
        )
        es = torch.zeros(n, dtype=torch.bool)
        es[ends_every - 1 :: ends_every] = True
        starts = np.arange(n, dtype=np.int64) * 2
        docs.append(DocTokens(f"d{k}", "v", header, [b], starts, starts + 1, es, "x " * n))
    return docs


def test_pooled_hidden_scorer_keeps_the_pooled_formula_whatever_tokens_it_is_given() -> None:
    blocks, qs = blocks_and_queries(5)
    docs = [d for d in fake_docs(blocks) if d.n]
    q = unit(qs.mean(0))
    scorer = Scorer(torch.device("cpu"))
    assert not scorer.needs_query_tokens
    r, _ = scorer.relevance(q, docs)
    assert torch.equal(r, gemv_blocks([b for d in docs for b in d.parts], torch.from_numpy(q)))
    assert torch.equal(scorer.relevance(q, docs, qs)[0], r)  # tokens are ignored
    tab = SentenceTables().table(docs, torch.device("cpu"))
    want = torch.zeros(tab.n).index_add_(0, tab.sid, r) / tab.norm  # the cosine of summed in-context vectors
    assert torch.equal(scorer.sentence_scores(q, docs, tab, qs), want)


def test_multivector_scorer_scores_by_query_tokens_and_needs_them() -> None:
    blocks, qs = blocks_and_queries(6)
    docs = [d for d in fake_docs(blocks) if d.n]
    q = unit(qs.mean(0))
    scorer = Scorer(torch.device("cpu"), vector_kind="multivector")
    assert scorer.needs_query_tokens
    r, doc_starts = scorer.relevance(q, docs, qs)
    np.testing.assert_allclose(r.numpy(), ref_maxsim(blocks, qs), rtol=1e-5, atol=1e-5)
    r2, s2, _ = scorer.relevance_smoothed(q, docs, 4.0, qs)
    np.testing.assert_allclose(r2.numpy(), r.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2.numpy(), smooth(r, doc_starts, 4.0).numpy(), rtol=1e-5, atol=1e-5)
    tab = SentenceTables().table(docs, torch.device("cpu"))
    want = sentence_maxsim([b for d in docs for b in d.parts], torch.from_numpy(qs), tab.sid, tab.n)
    assert torch.equal(scorer.sentence_scores(q, docs, tab, qs), want)
    with pytest.raises(QueryError, match="query's token vectors"):
        scorer.relevance(q, docs)
    with pytest.raises(QueryError, match="query's token vectors"):
        scorer.sentence_scores(q, docs, tab, np.zeros((0, 16), np.float32))


def test_a_correction_applies_to_each_query_tokens_column() -> None:
    blocks, qs = blocks_and_queries(7)
    docs = [d for d in fake_docs(blocks) if d.n]
    q = unit(qs.mean(0))
    seen: list[tuple[int, tuple[int, ...]]] = []

    def sink_first(r: torch.Tensor, qv: torch.Tensor, ds: list[DocTokens]) -> torch.Tensor:
        seen.append((r.numel(), tuple(qv.shape)))
        first = torch.cat([torch.full((d.n,), i == 0) for i, d in enumerate(ds)])
        return torch.where(first, torch.full_like(r, -1.0), r)

    plain = Scorer(torch.device("cpu"), vector_kind="multivector")
    fixed = Scorer(torch.device("cpu"), sink_first, vector_kind="multivector")
    r, _ = fixed.relevance(q, docs, qs)
    n0 = docs[0].n
    assert seen == [(r.numel(), (16,))] * len(qs)  # once per query token vector, each an r = D @ q
    assert torch.all(r[:n0] == -1.0)
    np.testing.assert_allclose(r[n0:].numpy(), plain.relevance(q, docs, qs)[0][n0:].numpy(), rtol=1e-6, atol=1e-6)
    tab = SentenceTables().table(docs, torch.device("cpu"))
    s = fixed.sentence_scores(q, docs, tab, qs)
    first = tab.doc == 0
    assert torch.all(s[first] == -1.0)
    np.testing.assert_allclose(s[~first].numpy(), plain.sentence_scores(q, docs, tab, qs)[~first].numpy(), atol=1e-6)


# --- searches over real stores of the tiny model folders ----------------------------------------------------
@pytest.fixture(scope="module")
def multivector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TokenEmbedder, Path]]:
    """The tiny ColBERT and Jina-v4 folders loaded, each with a store of the test benchmark's documents."""
    root = tmp_path_factory.mktemp("qtokens")
    bench = load_benchmark(write_bench(root / "bench"))
    folders = {
        "colbert": build_colbert(root / "colbert", resolve_model_path(MINILM_HUB)),
        "jina-v4": build_jina_v4_like(root / "jina-v4"),
    }
    out = {}
    for kind, folder in folders.items():
        e = load_embedder(Settings(model=str(folder), device="cpu"))
        assert e.vector_kind == "multivector"
        store = root / f"store-{kind}"
        index_benchmark(bench, Settings(model=str(folder), store_path=store, device="cpu"), e)
        out[kind] = (e, store)
    return out


def fetched(r: Retriever, doc_id: str) -> DocTokens:
    header = r.store.header(doc_id)
    assert header is not None
    [d] = r.fetcher.fetch({doc_id: header})
    return d


def tokens_of(d: DocTokens, sp: SpanResult) -> np.ndarray:
    """Rows of the tokens that start inside the span's characters."""
    return np.nonzero((d.starts >= sp.start) & (d.starts < sp.end))[0]


@pytest.mark.parametrize("kind", ["colbert", "jina-v4"])
def test_sentence_spans_score_maxsim_over_their_fetched_rows(
    multivector: dict[str, tuple[TokenEmbedder, Path]], kind: str
) -> None:
    e, store = multivector[kind]
    s = Settings(model=e.name, store_path=store, device="cpu", **IN_CONTEXT)
    with Retriever(s, embedder=e) as r:
        assert r.scorer.needs_query_tokens
        resp = r.search(QUERY, top=4)
        qs = e.embed_query_tokens(QUERY).astype(np.float64)
        assert resp.spans
        for sp in resp.spans:
            d = fetched(r, sp.doc_id)
            rows = d.vectors.numpy().astype(np.float64)[tokens_of(d, sp)]
            assert len(rows) and sp.text == DOCS[sp.doc_id][sp.start : sp.end]
            want = (rows @ qs.T).max(axis=0).mean()  # MaxSim of the query against the sentence's tokens
            assert sp.score == pytest.approx(want, abs=1e-4)
        # search_vectors embeds the query tokens from the text and finds the same
        [by_vector] = r.search_vectors([QUERY], r.embed_queries([QUERY]), top=4)
    assert [(x.doc_id, x.start, x.end) for x in by_vector.spans] == [(x.doc_id, x.start, x.end) for x in resp.spans]
    assert "embed" in by_vector.timings_ms


@pytest.mark.parametrize("kind", ["colbert", "jina-v4"])
def test_threshold_signal_is_each_tokens_best_query_token(
    multivector: dict[str, tuple[TokenEmbedder, Path]], kind: str
) -> None:
    e, store = multivector[kind]
    s = Settings(model=e.name, store_path=store, device="cpu", span_method="threshold")
    relative = ThresholdMethod.with_options(ThresholdOptions(mode="relative"))  # random models' scale is arbitrary
    with Retriever(s, embedder=e, span_method=relative) as r:
        ex = r.explain(QUERY, "bread")
        d = fetched(r, "bread")
        qs = e.embed_query_tokens(QUERY)
        pooled = e.embed_query(QUERY)
        spans = r.search(QUERY, top=3).spans
    rows = d.vectors.numpy().astype(np.float64)
    np.testing.assert_allclose(ex.raw, (rows @ qs.T.astype(np.float64)).max(axis=1), atol=1e-4)
    assert not np.allclose(ex.raw, rows @ pooled, atol=1e-3)  # not the pooled query's cosine
    assert spans and ex.spans
    for sp in ex.spans:  # a span's score is its best smoothed token
        inside = ex.smoothed[tokens_of(d, sp)]
        assert np.isclose(inside, sp.score, atol=1e-5).any() and sp.score >= ex.threshold


def test_pooled_hidden_sentence_spans_keep_the_pooled_cosine(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    bench = load_benchmark(write_bench(tmp_path / "bench"))
    s = Settings(store_path=tmp_path / "store", device="cpu", **IN_CONTEXT)
    index_benchmark(bench, s, minilm)
    with Retriever(s, embedder=minilm) as r:
        assert not r.scorer.needs_query_tokens
        spans = r.search(QUERY, top=4).spans
        q = minilm.embed_query(QUERY).astype(np.float64)
        ex = r.explain(QUERY, "bread")
        bread = fetched(r, "bread")
        assert spans
        for sp in spans:
            d = fetched(r, sp.doc_id)
            summed = d.vectors.numpy().astype(np.float64)[tokens_of(d, sp)].sum(axis=0)
            assert sp.score == pytest.approx(summed @ q / np.linalg.norm(summed), abs=1e-4)
    np.testing.assert_allclose(ex.raw, bread.vectors.numpy() @ q, atol=1e-5)
