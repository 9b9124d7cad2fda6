"""Storage encodings of token matrices, chosen per collection.

int8 is ours, not Qdrant's: Edge's Uint8 datatype clamps out-of-range values silently, so we map
each token row to symmetric int8 with its own scale (max |x| / 127) and store `code + 128` as uint8.
Decoding happens on the scoring device: (code - 128) * scale / 127.
"""

from __future__ import annotations

import numpy as np
import torch

from schemas.settings import StorageDtype

BYTES_PER_NUMBER: dict[str, int] = {"float32": 4, "float16": 2, "int8": 1}


def encode(vectors: np.ndarray, dtype: StorageDtype) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, d) float32 -> (stored array, per-row scales or None). Stored array is what goes to Qdrant."""
    if dtype == "float32":
        return vectors.astype(np.float32, copy=False), None
    if dtype == "float16":
        return vectors.astype(np.float16).astype(np.float32), None  # Qdrant narrows; round here so reads match
    if dtype != "int8":
        raise ValueError(f"{dtype} rows are encoded by indexer.compress.TokenCodec, not here")
    scale = np.abs(vectors).max(axis=1).astype(np.float32)  # (n,)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scale[:, None] * 127.0), -127, 127).astype(np.int16) + 128
    return codes.astype(np.uint8), scale


def decode(stored: torch.Tensor, scales: torch.Tensor | None, dtype: StorageDtype) -> torch.Tensor:
    """Stored values (n, d) on any device -> float32 (n, d) token vectors on that device."""
    if dtype != "int8":
        return stored.float()
    if scales is None:
        raise ValueError("int8 segment has no scales in its payload; re-ingest the document")
    return (stored.float() - 128.0) * (scales.float() / 127.0).unsqueeze(1)


def decode_numpy(stored: np.ndarray, scales: np.ndarray | None, dtype: StorageDtype) -> np.ndarray:
    """NumPy twin of `decode`, for tests and offline analysis."""
    return decode(
        torch.from_numpy(np.ascontiguousarray(stored)), None if scales is None else torch.from_numpy(scales), dtype
    ).numpy()
