"""Query-side forward passes: a query's pooled vector and its token vectors from one pass, optionally int8.

The search path needs both for a query: the pooled vector recalls documents and scores tokens, the
token vectors rank segments by MaxSim. Asking the embedder for each costs two forward passes; this
runs one and takes both from it. With `quantize=True` the query side runs a copy of the model whose
Linear layers are int8 (`torch.ao.quantization.quantize_dynamic`: weights int8, activations
quantized per batch); documents stay embedded by the float model. README "Speed" gives what each
costs and what it does to hit@1.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from indexer.embedders import HFTokenEmbedder


@dataclass
class EncodedQuery:
    """One query's vectors: pooled unit vector (dim,) and unit vectors of its content tokens (m, dim)."""

    pooled: np.ndarray
    tokens: np.ndarray


def int8_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with every Linear layer dynamically quantized to int8 (CPU only)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).float().cpu(), {torch.nn.Linear}, dtype=torch.qint8).eval()


class QueryEncoder:
    """Encodes queries (and short texts embedded alone) with an HFTokenEmbedder, through its public
    `query_ids` and `encode`.

    Args:
        embedder: the embedder the documents were embedded with.
        quantize: run an int8 copy of its model (CPU only; ignored on other devices).

    Thread-safe: forward passes are serialised by an internal lock (the tokenizer is not shareable).
    """

    def __init__(self, embedder: HFTokenEmbedder, quantize: bool = False) -> None:
        self.quantized = quantize and embedder.device.type == "cpu"
        if self.quantized:  # the same tokenizer and settings around an int8 model
            embedder = copy.copy(embedder)
            embedder.model = int8_copy(embedder.model)
        self.embedder = embedder
        self._lock = threading.Lock()

    def encode(self, queries: Sequence[str]) -> list[EncodedQuery]:
        """Pooled and token vectors of every query, in one batched forward pass.

        Args:
            queries: the questions.

        Returns:
            One `EncodedQuery` per query, in order.

        Raises:
            QueryError: a query is empty or too long.
        """
        e = self.embedder
        seqs = [e.query_ids(q) for q in queries]
        if not seqs:
            return []
        with self._lock:
            res = e.encode(seqs)
        p, s = len(e.prefix_for_query), len(e.suffix)
        out = []
        for ids, (rows, pooled) in zip(seqs, res, strict=True):
            tok = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(rows[p : len(ids) - s])), dim=-1)
            out.append(EncodedQuery(np.asarray(pooled, dtype=np.float32), tok.numpy().astype(np.float32)))
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of short texts embedded alone (truncated to the model window).

        Args:
            texts: the texts.

        Returns:
            (len(texts), dim) float32.
        """
        with self._lock:
            return self.embedder.embed_texts(texts)
