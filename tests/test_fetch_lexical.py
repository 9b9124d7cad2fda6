"""What a query fetches beyond MaxSim's best fetch_segments: BM25's segments (fetch_lexical), more for long documents
(fetch_per_tokens); real MiniLM, Edge store, tiny documents."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.embedders import HFTokenEmbedder
from retriever import Retriever
from retriever.evaluation.benchmark import load_benchmark
from retriever.evaluation.evaluate import index_benchmark
from retriever.lexical import SegmentLexicon
from schemas import Settings

# a long report whose one table row carries the question's rare words; the prose around it is about the
# same company, so the dense ranking has no reason to prefer the row
REPORT = (
    "Northwind Traders sells kitchen goods in many countries and reports its results every year. "
    "The company opened new stores and hired more staff during the year. Management believes the brand "
    "is strong and that customers value the range of products. The board met eleven times. "
    "Cash flow statement. Purchases of property and equipment (1,577) (1,373) (1,420). "
    "Northwind Traders expects demand to grow and plans to open more stores next year. The company "
    "competes with large retailers and with online shops. Its suppliers are spread over several regions."
)
OTHER = "Chess is a board game for two players on a board of 64 squares. Each player starts with sixteen pieces."
QUERY = "Will Northwind Traders open more stores, and what were its purchases of property and equipment?"


def _bench(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for doc_id, text in (("report", REPORT), ("chess", OTHER)):
            f.write(json.dumps({"doc_id": doc_id, "title": doc_id, "text": text}) + "\n")
    (folder / "queries.jsonl").write_text("")
    return folder


def _fetched(r: Retriever) -> set[tuple[str, int]]:
    heads = r.store.headers()
    return {(d, i) for d, h in heads.items() for i in range(h.n_segments) if (d, h.version, i) in r.fetcher.cache}


def _row_segments(r: Retriever) -> set[tuple[str, int]]:
    heads = r.store.headers()
    texts = r.store.segment_texts({(d, h.version): list(range(h.n_segments)) for d, h in heads.items()})
    return {key for key, (_, t) in texts.items() if "Purchases" in t or "1,577" in t}


def test_bm25_segments_join_maxsims(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    settings = Settings(store_path=tmp_path / "store", device="cpu", segment_tokens=16)
    index_benchmark(load_benchmark(_bench(tmp_path / "bench")), settings, minilm)
    base = {"fetch_segments": 1, "fetch_rank": "maxsim"}
    with Retriever(settings.updated(**base), embedder=minilm) as r:
        heads = r.store.headers()
        assert heads["report"].n_segments >= 6
        r.search(QUERY)
        alone = _fetched(r)
        row = _row_segments(r)
        docs = {d: (h.version, h.n_segments) for d, h in heads.items()}
        lexical = [(d, i) for d, i, _ in r.lexicon.rank(QUERY, docs, 10, r.segment_texts)]
    assert len(alone) == 1
    assert set(lexical[:1]) <= row, "BM25's best segment holds the row's rare words"
    with Retriever(settings.updated(**base, fetch_lexical=2), embedder=minilm) as r:
        spans = r.search(QUERY).spans
        both = _fetched(r)
    # MaxSim's one, then BM25's best two that MaxSim did not take: never the same segment twice
    assert both == alone | set([x for x in lexical if x not in alone][:2])
    assert len(both) == 3 and row & both
    assert any("1,577" in sp.text for sp in spans)
    for sp in spans:
        assert sp.text == {"report": REPORT, "chess": OTHER}[sp.doc_id][sp.start : sp.end]


def test_lexicon_ranks_by_rare_words_and_keeps_versions_apart() -> None:
    texts = {
        ("a", 0): (0, "The company sells goods."),
        ("a", 1): (25, "Purchases of property and equipment 1,577."),
        ("b", 0): (0, "The company sells goods and property."),
    }
    reads: list[dict[tuple[str, str], list[int]]] = []

    def read(wanted: dict[tuple[str, str], list[int]]) -> dict[tuple[str, int], tuple[int, str]]:
        reads.append(wanted)
        return {(d, i): texts[(d, i)] for (d, _), idx in wanted.items() for i in idx}

    lex = SegmentLexicon()
    docs = {"a": ("v1", 2), "b": ("v1", 1)}
    ranked = lex.rank("purchases of equipment", docs, 5, read)
    assert [(d, i) for d, i, _ in ranked] == [("a", 1)]  # only segments sharing a term, best first
    assert len(reads) == 1  # term counts read once per document version
    texts[("a", 0)] = (0, "Purchases of equipment doubled.")
    lex.rank("purchases", {"a": ("v2", 1)}, 5, read)
    assert reads[-1] == {("a", "v2"): [0]}  # a new version is read again, not served from the old one
    assert lex.rank("purchases", {"a": ("v2", 1)}, 5, read)[0][:2] == ("a", 0)
    assert lex.rank("the of", docs, 5, read) == []  # stop words only: no lexical ranking


def test_longer_recalled_documents_fetch_more_segments(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    settings = Settings(store_path=tmp_path / "store", device="cpu", segment_tokens=16)
    index_benchmark(load_benchmark(_bench(tmp_path / "bench")), settings, minilm)
    base = {"fetch_segments": 1, "fetch_rank": "maxsim"}
    with Retriever(settings.updated(**base), embedder=minilm) as r:
        heads = r.store.headers()
        tokens = sum(h.n_tokens for h in heads.values())
        assert sum(h.n_segments for h in heads.values()) >= 6
        r.search(QUERY)
        assert len(_fetched(r)) == 1
    with Retriever(settings.updated(**base, fetch_per_tokens=tokens // 4), embedder=minilm) as r:
        spans = r.search(QUERY).spans
        assert len(_fetched(r)) == round(tokens / (tokens // 4)) >= 4  # one segment per quarter of the text
    with Retriever(settings.updated(**base, fetch_per_tokens=10 * tokens), embedder=minilm) as r:
        r.search(QUERY)
        assert len(_fetched(r)) == 1  # short documents keep fetch_segments
    assert spans
    for sp in spans:
        assert sp.text == {"report": REPORT, "chess": OTHER}[sp.doc_id][sp.start : sp.end]
