"""ONNX Runtime backend: a transformers encoder exported to `model.onnx`, run without torch.

A folder holding `model.onnx` (or `model_quantized.onnx`, the name ONNX Runtime's and Optimum's
quantizers write) and `tokenizer.json` is read by this backend (`ModelFolder.backend` says "onnx").
The graph's output is the model's last hidden states, so token vectors, windows, pooling, prompts and
offsets are those of the torch `hf-pooled` backend for the same weights: a float32 export gives the
same vectors (to float rounding), an int8 one vectors of the same kind. `scripts/export_onnx.py`
makes such a folder from any transformers encoder folder, float32 or int8.

The tokenizer is the `tokenizers` library's own (the Rust tokenizer transformers' fast tokenizers wrap),
so neither torch nor transformers is imported to embed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.embedders.base import (
    Capabilities,
    EncodedQuery,
    TokenEmbedder,
    WindowEmbedder,
    clean_offsets,
    stitch_documents,
    unit_rows,
)
from indexer.embedders.folder import ModelFolder, read_json
from indexer.onnx_session import onnx_session
from indexer.windows import Window, padded_batches, plan_windows
from schemas.errors import ModelLoadError, QueryError
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import ModelSettings, Settings

QUERY_TEMPLATE = "Instruct: {task}\nQuery:{query}"  # the torch backend's (indexer.embedders.hf)
MAX_WINDOW = 32768
_KNOWN_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids"}


def _special(folder: Path, key: str) -> str | None:
    """A special token's text as tokenizer_config.json or special_tokens_map.json name it."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        value = (read_json(folder / name) or {}).get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def _causal(config: dict[str, Any]) -> bool:
    """A decoder-only model by what config.json says (no transformers registry here)."""
    archs = [str(a) for a in config.get("architectures") or []]
    return bool(config.get("is_decoder")) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


class OnnxTokenEmbedder(TokenEmbedder):
    """Token embedder over an ONNX export of a transformers encoder (or decoder): last hidden states as tokens.

    Args:
        settings: the settings (or their model group): device, pooling, windows, batch budget, query limits.
        folder: the model folder (`folder.onnx_file` and `tokenizer.json` in it).
        name: the model's identity recorded with a collection.
        threads: ONNX Runtime intra-op threads (None: its default).

    Raises:
        ModelLoadError: the folder lacks tokenizer.json, the graph is unreadable or has inputs this backend
            cannot feed.
    """

    def __init__(
        self, settings: Settings | ModelSettings, folder: ModelFolder, name: str, threads: int | None = None
    ) -> None:
        ms = settings.model if isinstance(settings, Settings) else settings
        model_file = folder.onnx_file
        if model_file is None:
            raise ModelLoadError(f"model folder {folder.path}: no model.onnx; export one with scripts/export_onnx.py")
        self.session = onnx_session(model_file, ms.device, threads)
        inputs = {i.name for i in self.session.get_inputs()}
        unknown = inputs - _KNOWN_INPUTS
        if unknown or "input_ids" not in inputs:
            raise ModelLoadError(
                f"ONNX model {model_file}: inputs {sorted(inputs)}; this backend feeds {sorted(_KNOWN_INPUTS)} "
                "(input_ids required): export the bare encoder with scripts/export_onnx.py"
            )
        self._inputs = inputs
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        self.tokenizer = self._load_tokenizer(folder.path)
        self.name = name
        self.dim = int(folder.config.get("hidden_size") or self.session.get_outputs()[0].shape[-1])
        pooling = ms.pooling if ms.pooling != "auto" else folder.pooling
        if pooling is None:
            pooling = "last" if _causal(folder.config) else "mean"
        self.capabilities = Capabilities(
            backend="onnx", vector_kind="pooled-hidden", pooling=pooling, query_tokens=True, part_wise=True
        )
        cls_id, sep_id = self._token_id(folder.path, "cls_token"), self._token_id(folder.path, "sep_token")
        if pooling == "last":  # as the torch backend: the end-of-text token closes every sequence
            eot = self.tokenizer.token_to_id("<|endoftext|>")
            if eot is None:
                eot = self._token_id(folder.path, "eos_token")
            self.prefix: list[int] = []
            self.suffix: list[int] = [eot] if eot is not None else []
            self.prefix_for_query: list[int] = []
        else:
            self.prefix = [cls_id] if cls_id is not None else []
            self.suffix = [sep_id] if sep_id is not None else []
            self.prefix_for_query = list(self.prefix)
        doc_prompt = folder.prompt("document", "passage")
        if doc_prompt:
            self.prefix = self.prefix + self.tokenizer.encode(doc_prompt, add_special_tokens=False).ids
        self.query_prompt = folder.prompt("query")
        self.query_instruction = ms.query_instruction if pooling == "last" else None
        pad = self._token_id(folder.path, "pad_token")
        self.pad_id = int(pad if pad is not None else self.suffix[0] if self.suffix else 0)
        limits = [int(folder.config.get("max_position_embeddings") or 512)]
        tml = int((read_json(folder.path / "tokenizer_config.json") or {}).get("model_max_length") or 0)
        if 0 < tml < 1_000_000:
            limits.append(tml)
        model_max = min(limits)
        self.window = min(ms.window_tokens or folder.trained_length or model_max, model_max, MAX_WINDOW)
        self.content = self.window - len(self.prefix) - len(self.suffix)
        if self.content < 8:
            raise ModelLoadError(f"model '{name}': a {self.window}-token window leaves no room for text; raise it")
        self.stride = max(1, int(self.content * (1.0 - ms.window_overlap)))
        self.batch_tokens = ms.batch_tokens
        self.max_query_tokens = min(ms.max_query_tokens, self.content)

    @staticmethod
    def _load_tokenizer(path: Path) -> Any:
        from tokenizers import Tokenizer

        f = path / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(f))
        except Exception as e:
            raise ModelLoadError(
                f"model folder {path}: cannot read tokenizer.json ({type(e).__name__}: {e}); an ONNX model "
                "folder needs the fast tokenizer's tokenizer.json beside model.onnx"
            ) from e
        tok.no_truncation()  # windows are cut here, as the torch backend cuts them
        tok.no_padding()
        return tok

    def _token_id(self, path: Path, key: str) -> int | None:
        text = _special(path, key)
        return None if text is None else self.tokenizer.token_to_id(text)

    # --- tokens ----------------------------------------------------------------------------------
    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        off = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        return list(enc.ids), clean_offsets(off, len(text))

    # --- forward ---------------------------------------------------------------------------------
    def batches(
        self, seqs: Sequence[Sequence[int]], attend: Sequence[int] | None = None
    ) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """The padded batches `seqs` run in: widest first, each of one width, at most `batch_tokens` padded tokens
        (`indexer.windows.padded_batches`, as the torch backend: both run the same batches).

        Returns:
            (sequence indices, ids (b, L) int64, attention mask (b, L) int64) per batch.
        """
        return padded_batches(seqs, attend, self.window, self.batch_tokens, self.pad_id)

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The graph on one batch: (b, L, dim) float32 last hidden states."""
        feed = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        (hidden,) = self.session.run([self._output], feed)
        return np.asarray(hidden, dtype=np.float32)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(b, dim) pooled rows by the declared pooling, before normalisation."""
        if self.pooling == "last":  # right padding: the last attended token saw the whole sequence
            return hidden[np.arange(len(hidden)), mask.sum(1) - 1]
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.astype(np.float32)
        return np.matmul(m[:, None, :], hidden)[:, 0] / np.maximum(m.sum(1, keepdims=True), 1.0)

    def encode(
        self, seqs: Sequence[Sequence[int]], attend: Sequence[int] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run model input ids (special tokens included) in token-budgeted batches.

        Returns:
            Per sequence: its (len, dim) float32 hidden rows (not normalised) and (dim,) unit pooled vector.
        """
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(seqs)
        for rows, ids, mask in self.batches(seqs, attend):
            hidden = self.forward(ids, mask)
            pooled = unit_rows(self._pool(hidden, mask))
            for r, j in enumerate(rows):
                out[j] = (hidden[r, : len(seqs[j])], pooled[r])
        return out

    # --- documents -------------------------------------------------------------------------------
    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        tokenized = [self.tokenize(d.text) for d in docs]
        windows: list[Window] = plan_windows([len(ids) for ids, _ in tokenized], self.content, self.stride)
        seqs = [self.prefix + tokenized[w.doc][0][w.start : w.end] + self.suffix for w in windows]
        return stitch_documents(docs, tokenized, windows, self.encode(seqs), len(self.prefix), self.dim)

    def windows(self) -> WindowEmbedder:
        """What part-wise embedding of long documents needs (`indexer.long_documents`): this embedder, whose
        `tokenize`, `content`, `stride`, `dim` and `embed_windows` are the window machinery."""
        return self

    def embed_windows(self, windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Embed each window's content token ids: per window (len, dim) hidden rows and a (dim,) unit pooled vector."""
        p = len(self.prefix)
        seqs = [self.prefix + [int(i) for i in w] + self.suffix for w in windows]
        return [(h[p : p + len(w)], pooled) for (h, pooled), w in zip(self.encode(seqs), windows, strict=True)]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        seqs = [self.prefix + self.tokenize(t)[0][: self.content] + self.suffix for t in texts]
        res = self.encode(seqs)
        return np.stack([r[1] for r in res]).astype(np.float32) if res else np.zeros((0, self.dim), np.float32)

    # --- queries ---------------------------------------------------------------------------------
    def query_ids(self, query: str) -> list[int]:
        """Model input ids of a query in its query form (instruction or prompt applied, special tokens added).

        Raises:
            QueryError: empty or too long.
        """
        if not query.strip():
            raise QueryError("query is empty; pass the question to search for")
        text = query
        if self.query_instruction:
            text = QUERY_TEMPLATE.format(task=self.query_instruction, query=query)
        elif self.query_prompt:
            text = self.query_prompt + query
        ids, _ = self.tokenize(text)
        if len(ids) > self.max_query_tokens:
            raise QueryError(
                f"query is {len(ids)} tokens, over the limit of {self.max_query_tokens} "
                "(max_query_tokens / model window); shorten it"
            )
        return self.prefix_for_query + ids + self.suffix

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedQuery]:
        """Pooled and content-token vectors of every query, from one batched forward pass.

        Raises:
            QueryError: a query is empty or too long.
        """
        seqs = [self.query_ids(q) for q in queries]
        p, s = len(self.prefix_for_query), len(self.suffix)
        return [
            EncodedQuery(pooled.astype(np.float32), unit_rows(rows[p : len(ids) - s]))
            for ids, (rows, pooled) in zip(seqs, self.encode(seqs), strict=True)
        ]

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        enc = self.encode_queries(queries)
        return np.stack([e.pooled for e in enc]) if enc else np.zeros((0, self.dim), np.float32)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        tokens = self.encode_queries([query])[0].tokens
        assert tokens is not None  # this backend always gives query tokens (capabilities.query_tokens)
        return tokens
