"""Sentences' alone vectors stored at ingest (`store_sentence_vectors`): what is stored, and that search
reads them instead of running the model, with the spans re-embedding gives."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.embedders import DelegatingEmbedder, HFTokenEmbedder
from indexer.ingest import ingest
from indexer.sentence_vectors import sentence_chars
from indexer.store import TokenStore, open_store
from retriever import Retriever
from retriever.fetch import Fetcher
from retriever.sentence_table import doc_sentences
from schemas.errors import StoreMismatchError
from schemas.models import LoadedDocument
from schemas.settings import Settings

DOCS = {
    "rivers.txt": (
        "The Nile is the longest river in Africa. It flows north through eleven countries before it reaches "
        "the Mediterranean Sea. Its water fed the farms of ancient Egypt for thousands of years.\n"
        "The Amazon carries more water than any other river. Its basin covers about seven million square "
        "kilometres, most of it rainforest. Dr. Smith measured its flow in 1995 near the city of Manaus."
    ),
    "space.txt": (
        "Mars is the fourth planet from the Sun. Its red colour comes from iron oxide dust on its surface. "
        "Olympus Mons on Mars is the tallest volcano known in the solar system.\n"
        "Jupiter is the largest planet. It has a great red spot, a storm larger than the Earth that has "
        "lasted for centuries. Its moon Ganymede is bigger than the planet Mercury."
    ),
    "bread.txt": (
        "Bread is made from flour, water and yeast. The yeast eats sugars and releases carbon dioxide, "
        "which makes the dough rise. Baking at a high temperature sets the crumb and browns the crust. "
        "Sourdough uses wild yeast and lactic bacteria instead of baker's yeast."
    ),
}
QUERIES = [
    "Which river is the longest in Africa?",
    "What makes Mars red?",
    "Why does dough rise?",
    "Where did Dr. Smith measure the flow of the Amazon?",
    "Which moon is bigger than Mercury?",
]


class CountingEmbedder(DelegatingEmbedder):
    """The real model, counting the texts it embeds alone (re-ranking and ingest's sentences)."""

    def __init__(self, inner: HFTokenEmbedder) -> None:
        super().__init__(inner)
        self.texts = 0

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.embed_texts(texts)


def _corpus(folder: Path, docs: dict[str, str] = DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text)
    return folder


def _settings(tmp_path: Path, on: bool, **over: object) -> Settings:
    # small segments: sentences start in several segments, and some cross a segment's edge
    return Settings(
        store_path=tmp_path / ("on" if on else "off"),
        device="cpu",
        segment_tokens=24,
        store_sentence_vectors=on,
        **over,
    )


def _all_stored(store: TokenStore) -> dict[tuple[str, str, int, int], np.ndarray]:
    want = {(h.doc_id, h.version): list(range(h.n_segments)) for h in store.headers().values()}
    return store.sentence_vectors(want)


def _query_sentences(store: TokenStore, settings: Settings) -> set[tuple[str, str, int, int]]:
    """Every sentence search cuts from whole documents, by (doc_id, version, start, end)."""
    fetcher = Fetcher(store, torch.device("cpu"), settings.spans.boundary, 1 << 26)
    out = set()
    for d in fetcher.fetch(store.headers()):
        s = doc_sentences(d)
        for a, b in zip(s.start.tolist(), s.end.tolist(), strict=True):
            c0, c1 = int(d.starts[a]), int(d.ends[b])
            if c1 > c0:
                out.add((d.doc_id, d.version, c0, c1))
    return out


@pytest.fixture
def stores(tmp_path: Path, minilm: HFTokenEmbedder) -> tuple[Settings, Settings]:
    corpus = _corpus(tmp_path / "corpus")
    on, off = _settings(tmp_path, True), _settings(tmp_path, False)
    for s in (on, off):
        report = ingest([corpus], s, embedder=minilm, id_from=corpus)
        assert report.documents == len(DOCS) and not report.failures
    return on, off


def test_collection_records_the_setting(stores: tuple[Settings, Settings]) -> None:
    on, off = stores
    s_on, s_off = open_store(on.store), open_store(off.store)
    try:
        assert s_on.meta.sentence_vectors and not s_off.meta.sentence_vectors
        assert _all_stored(s_off) == {}
    finally:
        s_on.close()
        s_off.close()


def test_asking_otherwise_than_the_collection_recorded_is_refused(
    stores: tuple[Settings, Settings], minilm: HFTokenEmbedder, tmp_path: Path
) -> None:
    on, off = stores
    extra = _corpus(tmp_path / "extra", {"tea.txt": "Green tea is made from leaves that are not oxidised."})
    for settings, asked in ((off, True), (on, False)):
        with pytest.raises(StoreMismatchError, match=f"store_sentence_vectors.*={asked}.*new collection"):
            ingest([extra], settings.updated(store_sentence_vectors=asked), embedder=minilm, id_from=extra)
    # left unset, an ingest follows what the collection recorded
    report = ingest([extra], Settings(store_path=on.store.store_path, device="cpu"), embedder=minilm, id_from=extra)
    assert report.documents == 1 and not report.failures
    store = open_store(on.store)
    try:
        assert any(k[0] == "tea.txt" for k in _all_stored(store))
    finally:
        store.close()


def test_every_sentence_search_cuts_is_stored_as_embed_texts_gives_it(
    stores: tuple[Settings, Settings], minilm: HFTokenEmbedder
) -> None:
    on, _ = stores
    store = open_store(on.store)
    try:
        stored = _all_stored(store)
        # the same units as the query path, and each sentence exactly once (with the segment it starts in)
        assert set(stored) == _query_sentences(store, on)
        assert max(h.n_segments for h in store.headers().values()) > 1
        texts = {h.doc_id: DOCS[h.doc_id] for h in store.headers().values()}
        keys = sorted(stored)
        fresh = minilm.embed_texts([texts[d][a:b] for d, _, a, b in keys])
        cos = np.einsum("ij,ij->i", np.stack([stored[k] for k in keys]), fresh)
        assert cos.min() > 0.999  # float16 rows of the very vectors re-ranking computes
    finally:
        store.close()


def test_sentence_chars_match_the_query_split_with_pooled_rows(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    s = _settings(tmp_path, True, storage_pool=2)
    corpus = _corpus(tmp_path / "corpus")
    ingest([corpus], s, embedder=minilm, id_from=corpus)
    store = open_store(s.store)
    try:
        assert set(_all_stored(store)) == _query_sentences(store, s)
    finally:
        store.close()


def _spans(r: Retriever) -> list[list[tuple[str, int, int, float]]]:
    return [[(x.doc_id, x.start, x.end, x.score) for x in r.search(q).spans] for q in QUERIES]


@pytest.mark.parametrize("fetch_segments", [0, 1])
def test_search_reads_them_instead_of_embedding(
    stores: tuple[Settings, Settings], minilm: HFTokenEmbedder, fetch_segments: int
) -> None:
    on, off = (s.updated(fetch_segments=fetch_segments) for s in stores)
    counting = CountingEmbedder(minilm)
    with Retriever(on, embedder=counting) as r_on, Retriever(off, embedder=minilm) as r_off:
        got, want = _spans(r_on), _spans(r_off)
    for g, w in zip(got, want, strict=True):
        assert [x[:3] for x in g] == [x[:3] for x in w]
        assert [x[3] for x in g] == pytest.approx([x[3] for x in w], abs=2e-3)
    if fetch_segments == 0:
        assert counting.texts == 0  # whole documents: every candidate's alone vector was stored
    else:
        # one segment fetched: sentences cut at its edges are finished from their neighbours and read
        # from the segment they start in; only a sentence cut differently than ingest cut it is embedded
        assert counting.texts < sum(len(g) for g in got)


def test_without_stored_vectors_the_model_reranks(stores: tuple[Settings, Settings], minilm: HFTokenEmbedder) -> None:
    _, off = stores
    counting = CountingEmbedder(minilm)
    with Retriever(off.updated(fetch_segments=0), embedder=counting) as r:
        r.search(QUERIES[0])
    assert counting.texts > 0


def _versions(store: TokenStore) -> set[tuple[str, str]]:
    return {(d, v) for d, v, _, _ in _all_stored(store)}


def test_replace_delete_and_compact_keep_them_consistent(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    s = _settings(tmp_path, True)
    corpus = _corpus(tmp_path / "corpus")
    ingest([corpus], s, embedder=minilm, id_from=corpus)
    changed = "Bread needs flour. Rye bread is dense and dark. It keeps for a week."
    (corpus / "bread.txt").write_text(changed)
    ingest([corpus], s, embedder=minilm, id_from=corpus)
    store = open_store(s.store)
    try:
        heads = store.headers()
        assert _versions(store) == {(d, h.version) for d, h in heads.items()}  # the old version's went with it
        bread = {(a, b) for d, _, a, b in _all_stored(store) if d == "bread.txt"}
        assert {changed[a:b] for a, b in bread} == {
            "Bread needs flour.",
            "Rye bread is dense and dark.",
            "It keeps for a week.",
        }
        before = _all_stored(store)
        assert store.delete_document("space.txt")
        store.compact()
        after = _all_stored(store)
        assert {k[0] for k in after} == {"rivers.txt", "bread.txt"}
        assert set(after) == {k for k in before if k[0] != "space.txt"}
        assert all(np.array_equal(after[k], before[k]) for k in after)
    finally:
        store.close()


def test_server_backend_stores_and_reads_the_same(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = _corpus(tmp_path / "corpus")
    edge = _settings(tmp_path, True)
    server = Settings(url=f"local:{tmp_path / 'qdrant'}", device="cpu", segment_tokens=24, store_sentence_vectors=True)
    got = []
    for s in (edge, server):
        ingest([corpus], s, embedder=minilm, id_from=corpus)
        store = open_store(s.store)
        try:
            assert store.meta.sentence_vectors
            got.append(_all_stored(store))
        finally:
            store.close()
    assert set(got[0]) == set(got[1]) and got[0]
    # the same float16 rows, give or take a last bit (the pipeline batches documents as they are parsed)
    assert all(np.allclose(got[0][k], got[1][k], atol=2e-3) for k in got[0])


def test_documents_without_tokens_get_no_sentences(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    doc = LoadedDocument(doc_id="e", source="e", title="e", text="", content_hash="0" * 64)
    emb = minilm.embed_documents([doc])[0]
    assert sentence_chars(emb, 1, 24, "sentences").shape == (0, 2)
