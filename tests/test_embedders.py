"""Embedders: tiny random models saved in each backend's real folder format for plumbing and loading code,
the packaged MiniLM for quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.embedders import (
    ColBERTEmbedder,
    HFTokenEmbedder,
    ModelFolder,
    RemoteCodeEmbedder,
    TokenEmbedder,
    canonical_name,
    load_embedder,
    resolve_model_path,
    trained_length,
)
from indexer.ingest import ingest
from indexer.store import CollectionMeta, open_store
from indexer.windows import assign_central, window_starts
from retriever import Retriever
from schemas.errors import ModelLoadError, QueryError, StoreMismatchError
from schemas.models import LoadedDocument
from schemas.settings import Settings
from tests.model_folders import build_colbert, build_jina_v4_like, build_qwen3

MULTIBYTE = "Zürich café — 東京タワー is tall. naïve façade 😀 emoji.\n\n"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"


def doc(text: str, doc_id: str = "d") -> LoadedDocument:
    return LoadedDocument(doc_id=doc_id, source=doc_id, title=doc_id, text=text, content_hash="f" * 64)


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three tiny model folders, built once per session."""
    root = tmp_path_factory.mktemp("models")
    return {
        "qwen3": build_qwen3(root / "qwen3"),
        "colbert": build_colbert(root / "colbert", resolve_model_path(MINILM_HUB)),
        "jina-v4": build_jina_v4_like(root / "jina-v4"),
    }


@pytest.fixture(scope="session")
def loaded(folders: dict[str, Path]) -> dict[str, TokenEmbedder]:
    """Each tiny folder loaded once through `load_embedder` (the Qwen3 tokenizer takes seconds to read)."""
    return {k: load_embedder(Settings(model=str(p), device="cpu")) for k, p in folders.items()}


# --- Qwen3 (decoder, last-token pooling) -------------------------------------------------------------
def test_qwen_appends_endoftext_and_pools_last(tiny_qwen: HFTokenEmbedder) -> None:
    assert tiny_qwen.pooling == "last"
    eot = tiny_qwen.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tiny_qwen.suffix == [eot]
    plain = tiny_qwen.tokenizer("hello world")["input_ids"]
    assert plain[-1] != eot  # the tokenizer does not add it: we must
    ids = tiny_qwen.query_ids("hello world")
    assert ids[-1] == eot and ids[:-1] == plain
    q = tiny_qwen.embed_query("hello world")
    assert q.shape == (64,) and np.isclose(np.linalg.norm(q), 1.0, atol=1e-5)
    assert np.allclose(q, tiny_qwen.encode([ids])[0][1], atol=1e-6)


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
    single = tiny_qwen.encode([ids[:60]])[0][0]
    single /= np.linalg.norm(single, axis=1, keepdims=True)
    first_owned = np.nonzero(assign_central(len(ids), emb.window_bounds) == 0)[0]
    assert np.allclose(emb.vectors[first_owned[:20]], single[first_owned[:20]], atol=1e-4)


def test_batches_are_bounded_by_padded_tokens_and_sorted_by_length(tiny_qwen: HFTokenEmbedder) -> None:
    docs = [doc("word " * n, f"d{n}") for n in (5, 300, 40, 90, 12)]
    batches = tiny_qwen.window_batches(docs)
    widths = [ids.shape[1] for ids, _ in batches]
    assert widths == sorted(widths, reverse=True)
    assert all(ids.numel() <= max(tiny_qwen.batch_tokens, ids.shape[1]) for ids, _ in batches)
    n_windows = sum(len(e.window_bounds) for e in tiny_qwen.embed_documents(docs))
    assert sum(ids.shape[0] for ids, _ in batches) == n_windows


def test_qwen3_folder_pools_last_token_and_prompts_queries(
    folders: dict[str, Path], loaded: dict[str, TokenEmbedder]
) -> None:
    e = loaded["qwen3"]
    assert isinstance(e, HFTokenEmbedder)
    assert (e.backend, e.vector_kind, e.pooling, e.dim, e.window) == ("hf-pooled", "pooled-hidden", "last", 32, 64)
    prompt = ModelFolder.read(folders["qwen3"]).prompt("query")
    assert prompt.endswith("Query:")
    assert e.query_ids("where?") == e.tokenize(prompt + "where?")[0] + e.suffix
    with pytest.raises(QueryError, match="empty"):
        e.embed_queries(["ok", "  "])


# --- MiniLM (packaged, mean pooling from its folder) --------------------------------------------------
def test_queries_are_checked(minilm: HFTokenEmbedder) -> None:
    with pytest.raises(QueryError, match="empty"):
        minilm.embed_query("   ")
    with pytest.raises(QueryError, match="over the limit"):
        minilm.embed_query("word " * 2000)


def test_minilm_pooling_and_identity_come_from_its_folder(minilm: HFTokenEmbedder) -> None:
    folder = ModelFolder.read(resolve_model_path(MINILM_HUB))
    assert folder.backend == "hf-pooled" and folder.pooling == "mean"
    assert minilm.pooling == "mean" and minilm.name == MINILM_HUB
    cls_folder = ModelFolder(Path("."), {}, pooling_config={"pooling_mode_cls_token": True})
    assert cls_folder.pooling == "cls"


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


# --- ColBERT (PyLate folder: Transformer + Dense) -----------------------------------------------------
def test_colbert_token_vectors_are_the_dense_projection(folders: dict[str, Path]) -> None:
    # loads the folder itself: this is the loading code under test
    from safetensors.torch import load_file
    from transformers import AutoModel

    e = load_embedder(Settings(model=str(folders["colbert"]), device="cpu"))
    assert isinstance(e, ColBERTEmbedder)
    assert (e.backend, e.vector_kind, e.dim) == ("colbert", "multivector", 128)
    text = "The striker scored a goal in the final minute."
    [emb] = e.embed_documents([doc(text)])
    tok = e.tokenizer
    marker = tok.convert_tokens_to_ids("[unused1]")
    ids = [tok.cls_token_id, marker, *tok(text, add_special_tokens=False)["input_ids"], tok.sep_token_id]
    [[batch, mask]] = e.window_batches([doc(text)])
    assert batch[0, : len(ids)].tolist() == ids and int(mask.sum()) == len(ids)  # [CLS] [D] text [SEP], padded
    bert = AutoModel.from_pretrained(str(folders["colbert"])).eval()
    weight = load_file(str(folders["colbert"] / "1_Dense" / "model.safetensors"))["linear.weight"]
    with torch.inference_mode():
        hidden = bert(input_ids=torch.tensor([ids])).last_hidden_state[0]
    expect = torch.nn.functional.normalize(hidden @ weight.T, dim=-1)[2:-1].numpy()
    assert np.allclose(emb.vectors, expect, atol=1e-5)


def test_colbert_queries_use_the_query_form(loaded: dict[str, TokenEmbedder]) -> None:
    e = loaded["colbert"]
    qt = e.embed_query_tokens("who scored?")
    assert qt.shape == (32, 128)  # query_length rows: [CLS] [Q] text [SEP] + [MASK] expansion
    assert np.allclose(np.linalg.norm(qt, axis=1), 1.0, atol=1e-5)
    assert e.embed_query_tokens("who " * 40 + "scored?").shape[0] > 32  # long queries are kept whole, not cut
    q = e.embed_query("who scored?")
    assert np.allclose(q, qt.mean(0) / np.linalg.norm(qt.mean(0)), atol=1e-5)
    # the query form differs from the document form of the same words
    assert not np.allclose(q, e.embed_texts(["who scored?"])[0], atol=1e-3)


# --- Jina v4 (remote code, encode_text) ---------------------------------------------------------------
def test_remote_code_rows_map_to_document_offsets(loaded: dict[str, TokenEmbedder]) -> None:
    e = loaded["jina-v4"]
    assert isinstance(e, RemoteCodeEmbedder)
    assert (e.backend, e.vector_kind, e.dim) == ("remote-code", "multivector", 128)
    text = "Zürich café — 東京タワー is tall. The striker scored."
    [emb] = e.embed_documents([doc(text)])
    ids, off = e.tokenize(text)
    assert emb.vectors.shape == (len(ids), 128) and np.array_equal(emb.offsets, off)
    with torch.inference_mode():
        rows = e.model.encode_text([text], task="retrieval", prompt_name="passage", return_multivector=True)[0]
    rows = rows.float().numpy()
    prompt_rows = len(rows) - len(ids)
    assert prompt_rows > 0  # "Passage: " rows come first and are dropped
    assert np.allclose(emb.vectors, rows[prompt_rows:], atol=1e-5)
    assert e.embed_query_tokens("who scored?").shape[1] == 128
    assert e.embed_queries(["a", "b"]).shape == (2, 128)


def test_remote_code_windows_cover_long_documents(loaded: dict[str, TokenEmbedder]) -> None:
    e = loaded["jina-v4"]
    assert e.window == 512  # its position table: no trained length in the folder
    text = MULTIBYTE * 40
    [emb] = e.embed_documents([doc(text)])
    assert len(emb.window_bounds) > 2 and emb.window_bounds[-1, 1] == len(emb.vectors)
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)


# --- end to end: ingest and search with every backend ------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "dim", "backend", "vector_kind"),
    [
        ("qwen3", 32, "hf-pooled", "pooled-hidden"),
        ("colbert", 128, "colbert", "multivector"),
        ("jina-v4", 128, "remote-code", "multivector"),
    ],
)
def test_ingest_and_search_with_each_backend(
    folders: dict[str, Path],
    loaded: dict[str, TokenEmbedder],
    tmp_path: Path,
    kind: str,
    dim: int,
    backend: str,
    vector_kind: str,
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in TOPICS.items():
        (corpus / f"{name}.txt").write_text((text + " ") * 8)
    s = Settings(model=str(folders[kind]), store_path=tmp_path / "store", device="cpu")
    # ColBERT (quick to load) goes through the pipeline's own loading; the others reuse their session load
    report = ingest([corpus], s, embedder=None if kind == "colbert" else loaded[kind])
    assert report.documents == 4 and not report.failures
    store = open_store(s.store)
    meta = store.meta
    store.close()
    assert (meta.dim, meta.backend, meta.vector_kind) == (dim, backend, vector_kind)
    assert meta.model == str(folders[kind].resolve())
    with Retriever(s, embedder=None if kind == "colbert" else loaded[kind]) as r:
        res = r.search("who won the football championship?", top=3)
    assert res.spans
    texts = {f"{n}.txt": (t + " ") * 8 for n, t in TOPICS.items()}
    for sp in res.spans:
        own = next(v for k, v in texts.items() if sp.doc_id.endswith(k))
        assert own[sp.start : sp.end] == sp.text and sp.text.strip()
    other = "colbert" if kind == "jina-v4" else "jina-v4"
    with pytest.raises(StoreMismatchError, match="model"):
        Retriever(s.updated(model=str(folders[other])), embedder=loaded[other])


def test_collection_refuses_another_backend() -> None:
    meta = CollectionMeta(
        model="m", dim=128, storage_dtype="float32", pooling="model", backend="colbert", vector_kind="multivector"
    )
    with pytest.raises(StoreMismatchError, match="colbert"):
        meta.check("m", 128, None, "collection 'c'", backend="remote-code", vector_kind="multivector")
    meta.check("m", 128, None, "collection 'c'", backend="colbert", vector_kind="multivector")
    old = CollectionMeta.model_validate({"model": "m", "dim": 4, "storage_dtype": "float32", "pooling": "mean"})
    assert (old.backend, old.vector_kind) == ("hf-pooled", "pooled-hidden")  # collections made before this read


# --- loading failures and model identity (issue 11) ---------------------------------------------------
def test_unreachable_hub_name_fails_with_model_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="someorg/x"):
        load_embedder(Settings(model="someorg/x", device="cpu"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"someorg/x.*HF_HUB_OFFLINE"):
        load_embedder(Settings(model="someorg/x", device="cpu"))


def test_broken_folders_fail_with_model_load_error(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_embedder(Settings(model=str(tmp_path / "absent"), device="cpu"))
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_embedder(Settings(model="not-a-folder-or-cached-model", device="cpu"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_embedder(Settings(model=str(empty), device="cpu"))
    broken = tmp_path / "broken"
    shutil.copytree(folders["colbert"], broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_embedder(Settings(model=str(broken), device="cpu"))
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config_sentence_transformers.json").write_text("{")
    with pytest.raises(ModelLoadError, match=r"config_sentence_transformers\.json"):
        load_embedder(Settings(model=str(broken), device="cpu"))
    assert cfg["model_type"] == "bert"


def test_packaged_path_and_hub_names_are_one_model(minilm: HFTokenEmbedder, tmp_path: Path) -> None:
    path = resolve_model_path(MINILM_HUB)
    assert canonical_name(str(path)) == canonical_name("all-MiniLM-L6-v2") == canonical_name(MINILM_HUB) == MINILM_HUB
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bake.txt").write_text(TOPICS["baking"])
    s = Settings(store_path=tmp_path / "store", device="cpu", model="all-MiniLM-L6-v2")
    ingest([corpus], s, embedder=minilm)
    with Retriever(s.updated(model=str(path)), embedder=HFTokenEmbedder(s.updated(model=str(path)))) as r:
        assert r.search("how to bake bread", top=1).spans[0].doc_id.endswith("bake.txt")
