"""The storage codec: token matrices to fewer bytes per token and back to the model's space.

A layout is three choices applied in this order on write and undone on read:

1. **pool** k adjacent tokens into one row (mean, renormalised; character range = first start to last
   end), so span code works on pooled "tokens" unchanged;
2. **reduce** the dimension: `pca` (centred, fitted on a sample of the collection's token vectors) or
   `truncate` (keep the first `dim` coordinates; only sensible for Matryoshka-trained models);
3. **dtype** of the stored numbers: float32, float16, int8 (per-row scale, see below), int4
   (symmetric, per-row scale, two codes per uint8 column) or binary: 1 bit per dimension packed 8 to a
   uint8 column. Qdrant has no 4- or 1-bit datatype, hence the packing into Uint8 multivectors.

Binary codes are signs of the *centred* coordinates z = y - mean (token vectors share a large common
direction, so signs of raw coordinates would mostly encode that). Decoding is z ~ c * a * sign(z): `a`
(per dimension, fitted) is E|z_j|, and `c` (per row) is the least-squares factor, kept as a float16
in two extra uint8 columns of the row itself: a JSON payload number would cost ~15 bytes per token.
int4 rows keep their scale (max |y| / 7) the same way.
Every decode returns float32 rows in the model's space, so the query needs no projection and
`r = D @ q` is unchanged downstream.

Fitted parameters (mean, PCA components, binary dimension scales) live in one `kind="codec"` point of
the collection, written by the first document (or an explicit sample), so they work on every backend.

int8 is ours, not Qdrant's: Edge's Uint8 datatype clamps out-of-range values silently, so each token
row maps to symmetric int8 with its own scale (max |x| / 127), stored as `code + 128` in uint8, and
decoded on the scoring device as (code - 128) * scale / 127.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from schemas.layout import SCALE_COLUMNS, StorageDtype, StorageLayout
from schemas.models import EmbeddedDocument

if TYPE_CHECKING:
    # torch is imported where rows are decoded, not here: writing a store, listing it and asking a process
    # that holds it (`chunkless list`, `stats`, a routed `search`) never decode, and torch costs ~1.5 s to import
    import torch

FIT_ROWS = 20_000  # token rows a fit uses at most: enough for a stable 1024-d covariance


# --- plain number formats (float32, float16, int8) -------------------------------------------------
BYTES_PER_NUMBER: dict[str, int] = {"float32": 4, "float16": 2, "int8": 1}


def encode_plain(vectors: np.ndarray, dtype: StorageDtype) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode rows in a plain number format.

    Args:
        vectors: (n, d) float32 rows.
        dtype: float32, float16 or int8.

    Returns:
        (what Qdrant stores, per-row scales for int8 or None).

    Raises:
        ValueError: int4 or binary, which `TokenCodec` encodes.
    """
    if dtype == "float32":
        return vectors.astype(np.float32, copy=False), None
    if dtype == "float16":
        return vectors.astype(np.float16).astype(np.float32), None  # Qdrant narrows; round here so reads match
    if dtype != "int8":
        raise ValueError(f"{dtype} rows are encoded by TokenCodec, not here")
    scale = np.abs(vectors).max(axis=1).astype(np.float32)  # (n,)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scale[:, None] * 127.0), -127, 127).astype(np.int16) + 128
    return codes.astype(np.uint8), scale


def decode_plain(stored: torch.Tensor, scales: torch.Tensor | None, dtype: StorageDtype) -> torch.Tensor:
    """Decode plain stored rows on their device.

    Args:
        stored: (n, d) stored values on any device.
        scales: (n,) int8 row scales, or None for float rows.
        dtype: float32, float16 or int8.

    Returns:
        (n, d) float32 token vectors on the same device.

    Raises:
        ValueError: int8 rows without scales (a damaged segment: re-ingest the document).
    """
    if dtype != "int8":
        return stored.float()
    if scales is None:
        raise ValueError("int8 segment has no scales in its payload; re-ingest the document")
    return (stored.float() - 128.0) * (scales.float() / 127.0).unsqueeze(1)


# --- fitted parameters --------------------------------------------------------------------------------
@dataclass
class CodecParams:
    """What a fit learns: mean (dim,), PCA components (dim, k) or None, binary dimension scales (k,) or None."""

    mean: np.ndarray
    components: np.ndarray | None
    abs_mean: np.ndarray | None

    def to_payload(self) -> dict[str, object]:
        def enc(a: np.ndarray | None) -> object:
            if a is None:
                return None
            a32 = np.ascontiguousarray(a, dtype=np.float32)
            return {"shape": list(a32.shape), "b64": base64.b64encode(a32.tobytes()).decode("ascii")}

        return {"mean": enc(self.mean), "components": enc(self.components), "abs_mean": enc(self.abs_mean)}

    @classmethod
    def from_payload(cls, p: dict) -> CodecParams:
        def dec(v: dict | None) -> np.ndarray | None:
            if v is None:
                return None
            return np.frombuffer(base64.b64decode(v["b64"]), dtype=np.float32).reshape(v["shape"]).copy()

        mean = dec(p["mean"])
        assert mean is not None
        return cls(mean=mean, components=dec(p.get("components")), abs_mean=dec(p.get("abs_mean")))


def fit(layout: StorageLayout, sample: np.ndarray, seed: int = 0) -> CodecParams:
    """Fit a layout's parameters.

    Args:
        layout: the storage layout (what it reduces and quantizes decides what is fitted).
        sample: (n, dim) unit token rows; at most FIT_ROWS of them are used.
        seed: seed of the row subsample.

    Returns:
        Mean, PCA components (pca) and binary dimension scales (binary).
    """
    rows = sample
    if len(rows) > FIT_ROWS:
        rows = rows[np.random.default_rng(seed).choice(len(rows), FIT_ROWS, replace=False)]
    x = rows.astype(np.float64)
    mean = x.mean(0)
    components = None
    y = x
    if layout.reduce == "pca":
        k = layout.stored_dim(x.shape[1])
        xc = x - mean
        evals, evecs = np.linalg.eigh(xc.T @ xc)  # (dim, dim): cheaper than an SVD of the sample
        components = evecs[:, np.argsort(evals)[::-1][:k]]
        y = xc @ components
    elif layout.reduce == "truncate":
        y = x[:, : layout.stored_dim(x.shape[1])]
    abs_mean = None
    if layout.dtype == "binary":
        centred = y if layout.reduce == "pca" else y - y.mean(0)
        abs_mean = np.maximum(np.abs(centred).mean(0), 1e-6)
    return CodecParams(
        mean=mean.astype(np.float32),
        components=None if components is None else components.astype(np.float32),
        abs_mean=None if abs_mean is None else abs_mean.astype(np.float32),
    )


# --- pooling ------------------------------------------------------------------------------------------
def pool_document(emb: EmbeddedDocument, k: int) -> EmbeddedDocument:
    """Merge each run of k adjacent tokens: mean vector renormalised, character range [first start, last end).

    Args:
        emb: the embedded document.
        k: tokens per stored row (1: unchanged).

    Returns:
        The document with pooled rows, offsets and window bounds in rows.
    """
    if k == 1:
        return emb
    n = emb.n_tokens
    idx = np.arange(0, n, k)
    counts = np.diff(np.append(idx, n)).astype(np.float32)
    v = np.add.reduceat(emb.vectors, idx, axis=0) / counts[:, None]
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    offsets = np.stack(
        [np.minimum.reduceat(emb.offsets[:, 0], idx), np.maximum.reduceat(emb.offsets[:, 1], idx)], axis=1
    )
    bounds = np.minimum(-(-emb.window_bounds // k), len(idx))  # token windows in pooled rows
    return EmbeddedDocument(
        doc=emb.doc,
        vectors=v.astype(np.float32),
        offsets=offsets,
        pooled=emb.pooled,
        window_pooled=emb.window_pooled,
        window_bounds=bounds,
    )


# --- encode / decode ----------------------------------------------------------------------------------
class TokenCodec:
    """Encode (n, dim) float32 token rows to what Qdrant stores, and decode them back on any device.

    Args:
        layout: the collection's storage layout.
        model_dim: the model's dimension.
        params: fitted parameters (required when `layout.needs_fit`).

    Raises:
        ValueError: a layout that needs fitted parameters got none, or asks for more dimensions than the model has.
    """

    def __init__(self, layout: StorageLayout, model_dim: int, params: CodecParams | None) -> None:
        if layout.needs_fit and params is None:
            raise ValueError(f"storage layout {layout.name} needs fitted parameters")
        self.layout = layout
        self.model_dim = model_dim
        self.stored_dim = layout.stored_dim(model_dim)
        self.params = params
        self._on: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        if self.layout.reduce == "pca":
            assert self.params is not None and self.params.components is not None
            return (x - self.params.mean) @ self.params.components
        return x[:, : self.stored_dim]

    def _binary_centre(self) -> np.ndarray:
        """What binary codes are centred on, in stored coordinates (PCA coordinates are centred already)."""
        assert self.params is not None
        if self.layout.reduce == "pca":
            return np.zeros(self.stored_dim, dtype=np.float32)
        return self.params.mean[: self.stored_dim]

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Encode token rows for storage.

        Args:
            vectors: (n, dim) float32 unit rows.

        Returns:
            (stored rows, per-row payload scales (int8) or None).
        """
        y = self._reduce(vectors.astype(np.float32, copy=False)).astype(np.float32, copy=False)
        if self.layout.dtype == "int4":
            return _encode_int4(y), None
        if self.layout.dtype != "binary":
            return encode_plain(y, self.layout.dtype)
        assert self.params is not None and self.params.abs_mean is not None
        z = y - self._binary_centre()
        a = self.params.abs_mean
        # least-squares row factor for z ~ c * a * sign(z): c = sum(|z| a) / sum(a^2)
        scale = (np.abs(z) @ a / float(a @ a)).astype(np.float16)
        return np.concatenate([np.packbits(z > 0, axis=1), scale[:, None].view(np.uint8)], axis=1), None

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        import torch

        if device not in self._on:
            p = self.params
            t: dict[str, torch.Tensor] = {}
            if p is not None:
                t["mean"] = torch.from_numpy(p.mean).to(device)
                t["centre"] = torch.from_numpy(self._binary_centre()).to(device)
                if p.components is not None:
                    t["components_t"] = torch.from_numpy(np.ascontiguousarray(p.components.T)).to(device)
                if p.abs_mean is not None:
                    t["abs_mean"] = torch.from_numpy(p.abs_mean).to(device)
            self._on[device] = t
        return self._on[device]

    def decode(self, stored: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        """Decode stored rows on their device.

        Args:
            stored: (n, columns) stored rows on any device.
            scales: (n,) payload scales (int8) or None.

        Returns:
            (n, model_dim) float32 rows in the model's space, on the same device.
        """
        import torch

        t = self._tensors(stored.device)
        if self.layout.dtype == "binary":
            codes = stored.to(torch.uint8)
            row_scale = codes[:, -SCALE_COLUMNS:].contiguous().view(torch.float16).float()  # (n, 1)
            shifts = torch.arange(7, -1, -1, device=stored.device, dtype=torch.uint8)
            bits = (codes[:, :-SCALE_COLUMNS].unsqueeze(-1) >> shifts) & 1  # (n, cols, 8), MSB first
            signs = bits.reshape(stored.shape[0], -1)[:, : self.stored_dim].float() * 2.0 - 1.0
            y = signs * t["abs_mean"] * row_scale + t["centre"]
        elif self.layout.dtype == "int4":
            y = _decode_int4(stored, self.stored_dim)
        else:
            y = decode_plain(stored, scales, self.layout.dtype)
        if self.layout.reduce == "pca":
            return t["mean"] + y @ t["components_t"]
        if self.layout.reduce == "truncate":
            return torch.nn.functional.pad(y, (0, self.model_dim - self.stored_dim))
        return y

    def decode_numpy(self, stored: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
        """NumPy twin of `decode`, for tests and offline analysis."""
        import torch

        sc = None if scales is None else torch.from_numpy(np.asarray(scales, dtype=np.float32))
        return self.decode(torch.from_numpy(np.ascontiguousarray(stored)), sc).numpy()


def _encode_int4(y: np.ndarray) -> np.ndarray:
    """(n, d) float32 -> (n, ceil(d/2) + 2) uint8: codes 1..15 (value / scale + 8), high nibble first, then scale."""
    n, d = y.shape
    scale = (np.abs(y).max(axis=1) / 7.0).astype(np.float16)
    scale = np.where(scale > 0, scale, np.float16(1.0))
    codes = np.clip(np.rint(y / scale.astype(np.float32)[:, None]), -7, 7).astype(np.int16) + 8
    if d % 2:
        codes = np.concatenate([codes, np.full((n, 1), 8, dtype=np.int16)], axis=1)  # a zero pads odd widths
    packed = ((codes[:, 0::2] << 4) | codes[:, 1::2]).astype(np.uint8)
    return np.concatenate([packed, scale[:, None].view(np.uint8)], axis=1)


def _decode_int4(stored: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of `_encode_int4` on the stored rows' device."""
    import torch

    codes = stored.to(torch.uint8)
    scale = codes[:, -SCALE_COLUMNS:].contiguous().view(torch.float16).float()  # (n, 1)
    packed = codes[:, :-SCALE_COLUMNS]
    nibbles = torch.stack([packed >> 4, packed & 15], dim=-1).reshape(stored.shape[0], -1)[:, :dim]
    return (nibbles.float() - 8.0) * scale
