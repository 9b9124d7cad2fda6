"""Embedding backends behind one contract (`TokenEmbedder`), chosen by what the model folder says.

`load_embedder(settings)` resolves `--model` to a folder (packaged copy, local path, hub cache, the hub),
reads its configuration files and builds the backend they describe (see `folder.ModelFolder.backend`).
"""

from __future__ import annotations

from indexer.embedders.base import (
    Capabilities,
    DelegatingEmbedder,
    EncodedQuery,
    ForwardScheduler,
    TokenEmbedder,
    VectorKind,
    WindowEmbedder,
    clean_offsets,
    forward_batch_tokens,
    forward_turn,
    scheduled_by,
)
from indexer.embedders.device import pick_device, pick_dtype
from indexer.embedders.folder import (
    ModelFolder,
    canonical_name,
    qwen3_tokenizer_dir,
    resolve_model_path,
    trained_length,
)
from indexer.embedders.hf import ColBERTEmbedder, HFTokenEmbedder
from indexer.embedders.onnx import OnnxTokenEmbedder
from indexer.embedders.remote_code import RemoteCodeEmbedder
from schemas.settings import ModelSettings, Settings


def load_embedder(settings: Settings | ModelSettings) -> TokenEmbedder:
    """The embedder the model folder describes.

    Args:
        settings: the settings (or just their model group).

    Returns:
        A loaded backend whose `name` is the model's canonical identity.

    Raises:
        ModelLoadError: the model cannot be found, reached or loaded; the message names it and what to do.
    """
    ms = settings.model if isinstance(settings, Settings) else settings
    path = resolve_model_path(ms.model)
    folder = ModelFolder.read(path)
    name = canonical_name(ms.model)
    backend = folder.backend
    if backend == "onnx":
        return OnnxTokenEmbedder(ms, folder, name)
    if backend == "remote-code":
        return RemoteCodeEmbedder(ms, folder, name)
    if backend == "colbert":
        return ColBERTEmbedder(ms, folder, name)
    return HFTokenEmbedder(ms, folder, name)


__all__ = [
    "Capabilities",
    "ColBERTEmbedder",
    "DelegatingEmbedder",
    "EncodedQuery",
    "ForwardScheduler",
    "HFTokenEmbedder",
    "ModelFolder",
    "OnnxTokenEmbedder",
    "RemoteCodeEmbedder",
    "TokenEmbedder",
    "VectorKind",
    "WindowEmbedder",
    "canonical_name",
    "clean_offsets",
    "forward_batch_tokens",
    "forward_turn",
    "load_embedder",
    "pick_device",
    "pick_dtype",
    "qwen3_tokenizer_dir",
    "resolve_model_path",
    "scheduled_by",
    "trained_length",
]
