"""Embedders: tiny random Qwen3 with the real tokenizer for plumbing, packaged MiniLM for quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder, assign_central, trained_length, window_starts
from schemas.errors import QueryError
from schemas.models import LoadedDocument

MULTIBYTE = "Zürich café — 東京タワー is tall. naïve façade 😀 emoji.\n\n"


def doc(text: str, doc_id: str = "d") -> LoadedDocument:
    return LoadedDocument(doc_id=doc_id, source=doc_id, title=doc_id, text=text, content_hash="f" * 64)


def test_qwen_appends_endoftext_and_pools_last(tiny_qwen: HFTokenEmbedder) -> None:
    assert tiny_qwen.pooling == "last"
    eot = tiny_qwen.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tiny_qwen.suffix == [eot]
    plain = tiny_qwen.tokenizer("hello world")["input_ids"]
    assert plain[-1] != eot  # the tokenizer does not add it: we must
    captured: list[list[int]] = []
    real = tiny_qwen._forward
    tiny_qwen._forward = lambda seqs: (captured.extend(seqs), real(seqs))[1]  # type: ignore[method-assign]
    try:
        q = tiny_qwen.embed_query("hello world")
    finally:
        tiny_qwen._forward = real  # type: ignore[method-assign]
    assert captured[0][-1] == eot and captured[0][:-1] == plain
    assert q.shape == (64,) and np.isclose(np.linalg.norm(q), 1.0, atol=1e-5)


def test_qwen_offsets_cover_multibyte_text_across_windows(tiny_qwen: HFTokenEmbedder) -> None:
    text = MULTIBYTE * 12  # several 64-token windows
    [emb] = tiny_qwen.embed_documents([doc(text)])
    assert len(emb.window_bounds) > 2
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)
    off = emb.offsets
    assert (np.diff(off[:, 0]) >= 0).all() and (off[:, 1] >= off[:, 0]).all() and off.max() <= len(text)
    covered = np.zeros(len(text), dtype=bool)
    for s, e in off:
        covered[s:e] = True
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())


def test_each_token_comes_from_its_most_central_window() -> None:
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]
    bounds = np.array([[0, 16], [8, 24], [16, 32], [24, 40]])
    owner = assign_central(40, bounds)
    assert owner[0] == 0 and owner[12] == 1 and owner[20] == 2 and owner[39] == 3


def test_windowed_vectors_match_a_single_pass_in_the_middle(tiny_qwen: HFTokenEmbedder) -> None:
    # a causal model's token state depends only on what precedes it: inside window 0, the windowed
    # document and the single 60-token pass must agree exactly
    text = "word " * 200
    [emb] = tiny_qwen.embed_documents([doc(text)])
    ids, _ = tiny_qwen.tokenize(text)
    single = tiny_qwen._forward([ids[:60]])[0][0].numpy()
    single /= np.linalg.norm(single, axis=1, keepdims=True)
    first_owned = np.nonzero(assign_central(len(ids), emb.window_bounds) == 0)[0]
    assert np.allclose(emb.vectors[first_owned[:20]], single[first_owned[:20]], atol=1e-4)


def test_queries_are_checked(minilm: HFTokenEmbedder) -> None:
    with pytest.raises(QueryError, match="empty"):
        minilm.embed_query("   ")
    with pytest.raises(QueryError, match="over the limit"):
        minilm.embed_query("word " * 2000)


TOPICS = {
    "volcano": "Volcanoes erupt when magma rises through the crust. Lava flows and ash clouds follow the eruption.",
    "baking": "To bake bread, mix flour, water, yeast and salt. Knead the dough and let it rise before baking.",
    "football": "The striker scored a goal in the final minute. The football team won the championship trophy.",
    "finance": "Interest rates rose as the central bank fought inflation. Bond prices fell and mortgages got dearer.",
}


@pytest.mark.parametrize(
    ("query", "topic"),
    [
        ("What comes out of a volcano when it erupts?", "volcano"),
        ("How do I make bread dough?", "baking"),
        ("Who won the football match?", "football"),
        ("Why did the central bank raise interest rates?", "finance"),
    ],
)
def test_minilm_query_lands_on_the_right_paragraph(minilm: HFTokenEmbedder, query: str, topic: str) -> None:
    paras = [" ".join([t] * 3) for t in TOPICS.values()]
    text = "\n\n".join(paras)
    [emb] = minilm.embed_documents([doc(text)])
    q = minilm.embed_query(query)
    r = emb.vectors @ q
    # the best 10-token window of relevance lies in the topic's paragraph
    smoothed = np.convolve(r, np.ones(10) / 10, mode="same")
    best_char = emb.offsets[int(np.argmax(smoothed)), 0]
    start = text.index(paras[list(TOPICS).index(topic)])
    assert start <= best_char < start + len(paras[list(TOPICS).index(topic)])


def test_default_window_is_the_trained_length(minilm: HFTokenEmbedder, tmp_path: Path) -> None:
    # MiniLM's position table has 512 rows, but its sentence-transformers config says it was tuned on 256
    assert minilm.window == 256 and minilm.model.config.max_position_embeddings == 512
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    assert trained_length(str(tmp_path)) == 128
    (tmp_path / "sentence_bert_config.json").write_text("not json")
    assert trained_length(str(tmp_path)) is None
    assert trained_length(str(tmp_path / "absent")) is None
