"""Pick the torch device and dtype a model runs on."""

from __future__ import annotations

import torch

from schemas.errors import ModelLoadError


def pick_device(device: str) -> torch.device:
    """The torch device for a `device` setting: 'auto' means CUDA when present, else the CPU.

    Raises:
        ModelLoadError: 'cuda' was asked for and no CUDA device is visible.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device=cuda but no CUDA device is visible; set CHUNKLESS_DEVICE=cpu or auto")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for a `dtype` setting: 'auto' means bf16 on CUDA and float32 on the CPU
    (CPU bf16 matmuls are slow and lossy)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
