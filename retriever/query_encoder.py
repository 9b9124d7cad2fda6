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

from indexer.embedders import QUERY_TEMPLATE, HFTokenEmbedder
from schemas.errors import QueryError


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
    """Encodes queries (and short texts embedded alone) with an HFTokenEmbedder's model and tokenizer.

    Args:
        embedder: the embedder the documents were embedded with (its tokenizer, pooling, special tokens).
        quantize: run an int8 copy of the model (CPU only; ignored on other devices).

    Thread-safe: forward passes are serialised by an internal lock (the tokenizer is not shareable).
    """

    def __init__(self, embedder: HFTokenEmbedder, quantize: bool = False) -> None:
        self.embedder = embedder
        self.quantized = quantize and embedder.device.type == "cpu"
        self.model = int8_copy(embedder.model) if self.quantized else embedder.model
        self._lock = threading.Lock()

    def query_ids(self, query: str) -> list[int]:
        """Model input ids of a query (instruction applied for decoders).

        Raises:
            QueryError: the query is empty or longer than `max_query_tokens`.
        """
        e = self.embedder
        if not query.strip():
            raise QueryError("query is empty; pass the question to search for")
        text = query
        if e.pooling == "last" and e.query_instruction:
            text = QUERY_TEMPLATE.format(task=e.query_instruction, query=query)
        ids, _ = e.tokenize(text)
        if len(ids) > e.max_query_tokens:
            raise QueryError(
                f"query is {len(ids)} tokens, over the limit of {e.max_query_tokens} "
                "(max_query_tokens / model window); shorten it"
            )
        return e.prefix + ids + e.suffix

    def encode(self, queries: Sequence[str]) -> list[EncodedQuery]:
        """Pooled and token vectors of every query, in one batched forward pass.

        Raises:
            QueryError: a query is empty or too long.
        """
        seqs = [self.query_ids(q) for q in queries]
        if not seqs:
            return []
        with self._lock:
            hidden, pooled = self._forward(seqs)
        p, s = len(self.embedder.prefix), len(self.embedder.suffix)
        out = []
        for i, ids in enumerate(seqs):
            tok = torch.nn.functional.normalize(hidden[i, p : len(ids) - s], dim=-1)
            out.append(EncodedQuery(pooled[i].numpy().astype(np.float32), tok.numpy().astype(np.float32)))
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of short texts embedded alone (truncated to the model window)."""
        e = self.embedder
        if not texts:
            return np.zeros((0, e.dim), np.float32)
        seqs = [e.prefix + e.tokenize(t)[0][: e.content] + e.suffix for t in texts]
        with self._lock:
            _, pooled = self._forward(seqs)
        return pooled.numpy().astype(np.float32)

    def _forward(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, L, dim) hidden states (float32, CPU) and (b, dim) pooled unit vectors of right-padded sequences."""
        e = self.embedder
        longest = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), longest), e.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for row, x in enumerate(seqs):
            ids[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        device = torch.device("cpu") if self.quantized else e.device
        with torch.inference_mode():
            hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
        m = mask.to(device).unsqueeze(-1).float()
        if e.pooling == "mean":
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            pooled = hidden[torch.arange(len(seqs), device=device), mask.sum(1).to(device) - 1]
        return hidden.cpu(), torch.nn.functional.normalize(pooled, dim=-1).cpu()
