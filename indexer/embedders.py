"""Token embedders: one unit vector per token, mapped to character offsets, plus a pooled vector.

Long documents are cut into overlapping windows; each token keeps the vector from the window in
which it sits most centrally, where it saw the most context on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from indexer.models import pick_device, pick_dtype, resolve_model_path
from schemas.errors import ModelLoadError, QueryError
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import Settings

DECODER_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3", "phi3", "qwen3_moe"}
QUERY_TEMPLATE = "Instruct: {task}\nQuery:{query}"


@runtime_checkable
class TokenEmbedder(Protocol):
    """What the indexer and retriever need from an embedding model."""

    name: str
    dim: int

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]: ...

    def embed_query(self, query: str) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class _Window:
    doc: int  # index into the batch of documents
    start: int  # token [start, end) in the document
    end: int


def window_starts(n_tokens: int, width: int, stride: int) -> list[int]:
    """Start offsets of windows of `width` tokens every `stride` tokens, the last one flush with the end."""
    if n_tokens <= width:
        return [0]
    starts = list(range(0, n_tokens - width, stride))
    starts.append(n_tokens - width)
    return starts


def assign_central(n_tokens: int, bounds: np.ndarray) -> np.ndarray:
    """For each token, the index of the window (bounds: (n_windows, 2)) where it is most central."""
    best = np.full(n_tokens, -1, dtype=np.int64)
    best_margin = np.full(n_tokens, -1, dtype=np.int64)
    idx = np.arange(n_tokens)
    for w, (s, e) in enumerate(bounds):  # loop over windows (few), not tokens
        margin = np.minimum(idx[s:e] - s, e - 1 - idx[s:e])
        better = margin > best_margin[s:e]
        best[s:e][better] = w
        best_margin[s:e][better] = margin[better]
    return best


def clean_offsets(offsets: np.ndarray, text_len: int) -> np.ndarray:
    """Make tokenizer offsets usable: clipped to the text, starts non-decreasing, end >= start.

    Byte-level BPE gives several tokens the same or overlapping ranges when a multi-byte character
    is split; spans take min(start)/max(end) over their tokens, so overlaps are harmless once ordered.
    """
    off = np.clip(offsets.astype(np.int64, copy=True), 0, text_len)
    off[:, 0] = np.maximum.accumulate(off[:, 0])
    off[:, 1] = np.maximum(off[:, 1], off[:, 0])
    return off


def trained_length(path: str) -> int | None:
    """max_seq_length from a local model folder's sentence_bert_config.json, if it has one."""
    cfg = Path(path) / "sentence_bert_config.json"
    try:
        n = json.loads(cfg.read_text()).get("max_seq_length") if cfg.is_file() else None
    except (OSError, ValueError):
        return None
    return int(n) if isinstance(n, int) and n > 0 else None


class HFTokenEmbedder:
    """A Hugging Face model as a TokenEmbedder: last-token pooling for decoders, mean pooling for encoders."""

    def __init__(self, settings: Settings) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weight-loading bar on every search is noise

        self.name = settings.model.model
        path = resolve_model_path(settings.model.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"model '{settings.model.model}': cannot load ({e}); set --model/CHUNKLESS_MODEL to a local "
                "model folder or an installed packaged model"
            ) from e
        self.device = pick_device(settings.model.device)
        self.torch_dtype = pick_dtype(settings.model.dtype, self.device)
        model = AutoModel.from_pretrained(path, dtype=self.torch_dtype)
        self._init(model, config, settings, trained_length(path))

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, settings: Settings) -> HFTokenEmbedder:
        """Wrap an already-built model (tests build tiny random Qwen3 models this way)."""
        self = cls.__new__(cls)
        self.name = settings.model.model
        self.tokenizer = tokenizer
        self.device = pick_device(settings.model.device)
        self.torch_dtype = pick_dtype(settings.model.dtype, self.device)
        self._init(model.to(self.torch_dtype), model.config, settings)
        return self

    def _init(self, model: torch.nn.Module, config: object, settings: Settings, trained: int | None = None) -> None:
        self.model = model.to(self.device).eval()
        model_type = str(getattr(config, "model_type", ""))
        pooling = settings.model.pooling
        if pooling == "auto":
            pooling = "last" if model_type in DECODER_TYPES else "mean"
        self.pooling: Literal["last", "mean"] = pooling
        self.dim = int(getattr(config, "hidden_size"))  # noqa: B009 - every HF text model has it
        tok = self.tokenizer
        limits = [int(getattr(config, "max_position_embeddings", 512))]
        tml = int(getattr(tok, "model_max_length", 0) or 0)
        if 0 < tml < 1_000_000:
            limits.append(tml)
        model_max = min(limits)
        # default: the length the model was fine-tuned for, when it says (sentence-transformers
        # max_seq_length), not its position table: MiniLM's 256 vs 512 is +.03 span hit@1 on squad2-dev
        self.window = min(settings.model.window_tokens or trained or model_max, model_max, 32768)
        tok.model_max_length = 10**9  # we window ourselves; silence the "sequence too long" warning
        if self.pooling == "last":
            eot = tok.convert_tokens_to_ids("<|endoftext|>")
            if not isinstance(eot, int) or eot == tok.unk_token_id:
                eot = tok.eos_token_id
            self.prefix: list[int] = []
            self.suffix: list[int] = [int(eot)]
        else:
            cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
            self.prefix = [int(cls_id)] if cls_id is not None else []
            self.suffix = [int(sep_id)] if sep_id is not None else []
        self.content = self.window - len(self.prefix) - len(self.suffix)
        self.stride = max(1, int(self.content * (1.0 - settings.model.window_overlap)))
        pad = tok.pad_token_id
        self.pad_id = int(pad if pad is not None else self.suffix[0] if self.suffix else 0)
        self.batch_tokens = settings.model.batch_tokens
        self.query_instruction = settings.model.query_instruction
        self.max_query_tokens = min(settings.model.max_query_tokens, self.content)

    # ---------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        """Token ids of `text` without special tokens, and their (n, 2) character offsets."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        return ids, clean_offsets(off, len(text))

    def _forward(self, seqs: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run sequences in token-budgeted batches; per sequence: (hidden (len, dim) float32, pooled (dim,))."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(seqs)
        i = 0
        while i < len(order):
            longest = len(seqs[order[i]])
            n = max(1, min(len(order) - i, self.batch_tokens // max(longest, 1)))
            batch = order[i : i + n]
            ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, j in enumerate(batch):
                ids[row, : len(seqs[j])] = torch.tensor(seqs[j])
                mask[row, : len(seqs[j])] = 1
            with torch.inference_mode():
                hidden = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                ).last_hidden_state.float()  # (b, L, dim); right padding keeps causal states exact
            m = mask.to(self.device).unsqueeze(-1).float()
            if self.pooling == "mean":
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            else:
                last = mask.sum(1).to(self.device) - 1
                pooled = hidden[torch.arange(len(batch), device=self.device), last]
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for row, j in enumerate(batch):
                out[j] = (hidden[row, : len(seqs[j])].cpu(), pooled[row].cpu())
            i += n
        return [o for o in out if o is not None]

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        """Embed whole documents: one unit vector per token, plus window and document pooled vectors."""
        tokenized = [self.tokenize(d.text) for d in docs]
        windows: list[_Window] = []
        for k, (ids, _) in enumerate(tokenized):
            windows += [
                _Window(k, s, min(s + self.content, len(ids)))
                for s in window_starts(len(ids), self.content, self.stride)
            ]
        seqs = [self.prefix + tokenized[w.doc][0][w.start : w.end] + self.suffix for w in windows]
        results = self._forward(seqs)
        p = len(self.prefix)
        out = []
        for k, doc in enumerate(docs):
            ids, offsets = tokenized[k]
            mine = [i for i, w in enumerate(windows) if w.doc == k]
            bounds = np.array([[windows[i].start, windows[i].end] for i in mine], dtype=np.int64)
            owner = assign_central(len(ids), bounds)
            vectors = np.empty((len(ids), self.dim), dtype=np.float32)
            for local, i in enumerate(mine):
                s, e = bounds[local]
                take = np.nonzero(owner[s:e] == local)[0]
                hidden = results[i][0][p : p + (e - s)].numpy()  # (e - s, dim) content rows
                vectors[s + take] = hidden[take]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            wp = np.stack([results[i][1].numpy() for i in mine]).astype(np.float32)
            weights = (bounds[:, 1] - bounds[:, 0]).astype(np.float32)
            pooled = (wp * weights[:, None]).sum(0)
            pooled /= max(float(np.linalg.norm(pooled)), 1e-12)
            out.append(
                EmbeddedDocument(
                    doc=doc, vectors=vectors, offsets=offsets, pooled=pooled, window_pooled=wp, window_bounds=bounds
                )
            )
        return out

    def _query_ids(self, query: str) -> list[int]:
        """Model input ids of a query (instruction applied for decoders); QueryError if empty or too long."""
        if not query.strip():
            raise QueryError("query is empty; pass the question to search for")
        text = query
        if self.pooling == "last" and self.query_instruction:
            text = QUERY_TEMPLATE.format(task=self.query_instruction, query=query)
        ids, _ = self.tokenize(text)
        if len(ids) > self.max_query_tokens:
            raise QueryError(
                f"query is {len(ids)} tokens, over the limit of {self.max_query_tokens} "
                "(max_query_tokens / model window); shorten it"
            )
        return self.prefix + ids + self.suffix

    def embed_query(self, query: str) -> np.ndarray:
        """Pooled unit vector (dim,) of a query; the Qwen3 instruction is applied when configured."""
        return self._forward([self._query_ids(query)])[0][1].numpy().astype(np.float32)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of several queries in batched forward passes."""
        res = self._forward([self._query_ids(q) for q in queries])
        return np.stack([r[1].numpy() for r in res]).astype(np.float32) if res else np.zeros((0, self.dim), np.float32)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        """Unit vectors (m, dim) of the query's content tokens (MaxSim re-ranking against `tokens`)."""
        ids = self._query_ids(query)
        hidden = self._forward([ids])[0][0][len(self.prefix) : len(ids) - len(self.suffix)]
        return torch.nn.functional.normalize(hidden, dim=-1).numpy().astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled unit vectors (n, dim) of short texts embedded alone (chunk baselines, re-ranking)."""
        seqs = [self.prefix + self.tokenize(t)[0][: self.content] + self.suffix for t in texts]
        res = self._forward(seqs)
        return np.stack([r[1].numpy() for r in res]).astype(np.float32) if res else np.zeros((0, self.dim), np.float32)


def load_embedder(settings: Settings) -> TokenEmbedder:
    """The configured embedder (a Hugging Face model today)."""
    return HFTokenEmbedder(settings)
