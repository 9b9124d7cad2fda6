"""BM25 over fetched sentences: terms, statistics kept right as documents come and go, and the search path."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.store import open_or_create_store
from retriever import Retriever
from retriever.lexical import LexicalStats, UnitStats, bm25, coverage, terms
from schemas.models import LoadedDocument
from schemas.settings import Settings


def test_terms_fold_case_plurals_and_drop_stop_words() -> None:
    assert terms("The Normans were in NORMANDY; the Norman's lands.") == ["norman", "normandy", "norman", "land"]
    assert terms("class glass") == ["class", "glass"]  # "ss" is no plural
    assert coverage("Where do the Normans live?", "Normans live in Normandy.") == 1.0
    assert coverage("the of", "anything") == 0.0


def rebuilt(units: dict[str, UnitStats]) -> LexicalStats:
    s = LexicalStats()
    for k, u in units.items():
        s.add(k, u)
    return s


def test_statistics_after_adds_replacements_and_deletes_equal_a_rebuild() -> None:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(30)]
    live: dict[str, UnitStats] = {}
    stats = LexicalStats()
    for step in range(300):
        key = f"doc{rng.randrange(12)}"
        if rng.random() < 0.3:
            assert stats.remove(key) == (key in live)
            live.pop(key, None)
        else:  # add, or replace what the key held
            unit = UnitStats.of(
                [" ".join(rng.choices(vocab, k=rng.randrange(1, 9))) for _ in range(rng.randrange(1, 6))]
            )
            stats.add(key, unit)
            live[key] = unit
        if step % 25 == 0 or step == 299:
            fresh = rebuilt(live)
            assert (stats.n, stats.total_len) == (fresh.n, fresh.total_len)
            assert +stats.df == +fresh.df and all(v > 0 for v in stats.df.values())
            assert stats.idf("w3") == pytest.approx(fresh.idf("w3"))
    for key in list(live):
        stats.remove(key)
    assert (stats.n, stats.total_len, stats.df) == (0, 0, Counter())


def test_bm25_prefers_the_sentence_with_the_rare_query_term() -> None:
    sentences = ["The castle stands on a hill.", "The castle was built by Rollo.", "A castle has walls."]
    unit = UnitStats.of(sentences)
    stats = LexicalStats()
    stats.add("run", unit)
    s = bm25("Who built the castle?", unit.counts, stats)
    assert int(s.argmax()) == 1 and s[1] > s[0] > 0
    assert stats.idf("rollo") > stats.idf("castle")
    stats.add("other", UnitStats.of(["Rollo led the Vikings.", "Rollo was a ruler."]))
    assert stats.idf("rollo") < LexicalStats(df=unit.df, n=3, total_len=unit.total_len).idf("rollo")


def doc(doc_id: str, text: str) -> LoadedDocument:
    return LoadedDocument(doc_id=doc_id, source=doc_id, title=doc_id, text=text, content_hash=f"{abs(hash(text)):016x}")


def test_search_reads_the_current_version_after_replace_and_delete(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    s = Settings(store_path=tmp_path / "store", device="cpu", lexical_weight=0.3, lexical_first=0.3, rerank_k=4)
    old = "Harbours shelter ships from storms. The lighthouse keeper was named Tobias Quill. Gulls nest on rocks."
    new = "Harbours shelter ships from storms. The lighthouse keeper was named Marta Vell. Gulls nest on rocks."
    other = "Bread rises because yeast makes gas. Ovens bake loaves. Flour comes from wheat."

    def write(*docs: LoadedDocument) -> None:
        store = open_or_create_store(s.store, minilm.name, minilm.dim, minilm.pooling)
        try:
            for emb in minilm.embed_documents(list(docs)):
                store.write_document(emb)
            store.flush()
        finally:
            store.close()

    write(doc("harbour", old), doc("bread", other))
    with Retriever(s, embedder=minilm) as r:
        first = r.search("Who was the lighthouse keeper, Tobias Quill?", top=1)
    assert "Tobias Quill" in first.spans[0].text and first.features["lexical"] == pytest.approx(1.0)

    write(doc("harbour", new))  # replaced: a new version, whose runs carry new statistics
    with Retriever(s, embedder=minilm) as r:
        after = r.search("Who was the lighthouse keeper, Tobias Quill?", top=3)
        assert all("Tobias" not in sp.text for sp in after.spans)
        assert "Marta Vell" in r.search("lighthouse keeper Marta Vell", top=1).spans[0].text
    store = open_or_create_store(s.store, minilm.name, minilm.dim, minilm.pooling)
    try:
        store.delete_document("harbour")
        store.flush()
    finally:
        store.close()
    with Retriever(s, embedder=minilm) as r:
        gone = r.search("lighthouse keeper Marta Vell", top=3)
    assert gone.spans and all(sp.doc_id == "bread" for sp in gone.spans)
