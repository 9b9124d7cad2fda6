"""Transformers models run window by window: pooled-hidden encoders/decoders and ColBERT-family models.

Both feed token ids straight to the model in batches bounded by padded tokens, longest first, so a
batch holds windows of similar length and little padding; the tokenizer runs once per document,
outside the forward pass. Both embed long documents part by part (`windows()`), and both give a
query's pooled and token vectors from one forward pass (`encode_queries`), optionally through an
int8 copy of the model (`ModelSettings.query_int8`: Linear layers dynamically quantized, CPU only;
documents stay embedded by the float model). Each sequence is padded to a width of its own (its length rounded up to
PAD_MULTIPLE), never to the longest of its batch: a forward pass's float results depend on the padded
width but not on the batch size or the other rows (measured on MKL, 0 of 96 differ), so a query, a
sentence or a window gets bit-identical vectors whatever it was batched with. Both are `scheduled`
(`Capabilities.scheduled`): under a caller's `scheduled_by`, each document forward batch and each
tokenizer call takes the scheduler's turn, and batches shrink to its budget (same vectors, see above).
"""

from __future__ import annotations

import copy
import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.embedders.base import (
    Capabilities,
    EncodedQuery,
    TokenEmbedder,
    WindowEmbedder,
    clean_offsets,
    forward_batch_tokens,
    forward_turn,
    stitch_documents,
    unit_rows,
)
from indexer.embedders.device import pick_device, pick_dtype
from indexer.embedders.folder import ModelFolder, canonical_name, read_json, resolve_model_path
from indexer.windows import Window, padded_batches, plan_windows
from schemas.errors import ModelLoadError, QueryError
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import ModelSettings, Settings

QUERY_TEMPLATE = "Instruct: {task}\nQuery:{query}"
MAX_WINDOW = 32768


def _model_settings(settings: Settings | ModelSettings) -> ModelSettings:
    return settings.model if isinstance(settings, Settings) else settings


def causal_only(config: Any) -> bool:
    """True for a decoder-only architecture: transformers registers it for causal LM and not masked LM.

    Such a model's last token is the only one that saw the whole text, so it pools by the last token.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    kind = type(config)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING and kind not in MODEL_FOR_MASKED_LM_MAPPING


def load_transformer(folder: ModelFolder, settings: ModelSettings, path: Path | None = None) -> tuple[Any, Any]:
    """Tokenizer and bare transformer (no head) of a folder, any failure as ModelLoadError."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar on every search is noise
    where = path or folder.path
    device = pick_device(settings.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where))
        model = AutoModel.from_pretrained(str(where), dtype=pick_dtype(settings.dtype, device))
    except Exception as e:
        raise ModelLoadError(
            f"model '{settings.model}': cannot load from {where} ({type(e).__name__}: {e}); point --model / "
            "CHUNKLESS_MODEL at a complete model folder or an installed packaged model"
        ) from e
    return tokenizer, model


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(b, L, h) rows and (b, L) attention mask -> (b, h) mean of the attended rows.

    One batched matrix product: `(x * mask).sum(1)` builds a second (b, L, h) tensor first and costs
    several times the CPU, which ingest pays on top of every forward pass.
    """
    m = mask.to(x.dtype)
    return torch.bmm(m.unsqueeze(1), x).squeeze(1) / m.sum(1, keepdim=True).clamp(min=1)


def int8_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with every Linear layer dynamically quantized to int8 (CPU only)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).float().cpu(), {torch.nn.Linear}, dtype=torch.qint8).eval()


class WindowedModel(TokenEmbedder):
    """Shared machinery of transformers backends: windows, token-budgeted batches, stitching, query encoding.

    Subclasses set the capabilities and implement `_head` (hidden states -> token vectors and pooled vector),
    `_query_inputs` and `_encoded` (a query's model inputs, and its vectors from the one forward pass).
    """

    def _setup(
        self,
        name: str,
        tokenizer: Any,
        model: torch.nn.Module,
        settings: ModelSettings,
        prefix: list[int],
        suffix: list[int],
        trained: int | None,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.device = pick_device(settings.device)
        self.torch_dtype = pick_dtype(settings.dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.torch_dtype).eval()
        config: Any = model.config
        limits = [int(config.to_dict().get("max_position_embeddings") or 512)]  # optional in HF configs
        tml = int(tokenizer.model_max_length or 0)
        if 0 < tml < 1_000_000:
            limits.append(tml)
        model_max = min(limits)
        # default: the length the model was fine-tuned for, when it says (sentence-transformers
        # max_seq_length), not its position table: MiniLM's 256 vs 512 is +.03 span hit@1 on squad2-dev
        self.window = min(settings.window_tokens or trained or model_max, model_max, MAX_WINDOW)
        tokenizer.model_max_length = 10**9  # we window ourselves; silence the "sequence too long" warning
        self.prefix, self.suffix = prefix, suffix
        self.content = self.window - len(prefix) - len(suffix)
        if self.content < 8:
            raise ModelLoadError(f"model '{name}': a {self.window}-token window leaves no room for text; raise it")
        self.stride = max(1, int(self.content * (1.0 - settings.window_overlap)))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else suffix[0] if suffix else 0)
        self.batch_tokens = settings.batch_tokens
        self.max_query_tokens = min(settings.max_query_tokens, self.content)
        self.query_int8 = settings.query_int8 and self.device.type == "cpu"
        self._int8: WindowedModel | None = None  # built on the first query: ingest never needs it
        self._int8_lock = threading.Lock()

    # --- subclass hooks --------------------------------------------------------------------------
    def _head(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, L, h) hidden states and (b, L) attention mask -> (b, L, dim) token vectors, (b, dim) pooled."""
        raise NotImplementedError

    def _query_inputs(self, queries: Sequence[str]) -> tuple[list[list[int]], list[int] | None]:
        """Model input ids of each query in its query form, and how many of them are attended (None: all).

        Raises:
            QueryError: a query is empty or too long.
        """
        raise NotImplementedError

    def _encoded(self, seq: Sequence[int], rows: np.ndarray, pooled: np.ndarray) -> EncodedQuery:
        """A query's vectors from its forward pass: `rows` (len(seq), dim) as the model gave them, `pooled` unit."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------
    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        return ids, clean_offsets(off, len(text))

    def batches(
        self, seqs: Sequence[Sequence[int]], attend: Sequence[int] | None = None
    ) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """The padded batches `seqs` run in: widest first, each of one width, at most `batch_tokens` padded tokens.

        A sequence's width depends on its length alone (rounded up to PAD_MULTIPLE, never past the window
        unless it is longer), so what it is batched with never changes its vectors (see the module doc).

        Args:
            seqs: model input ids per sequence.
            attend: per sequence, how many leading tokens are attended (default: all).

        Returns:
            (sequence indices, ids (b, L), attention mask (b, L)) per batch, on the CPU.
        """
        budget = forward_batch_tokens(self.batch_tokens)  # a caller's scheduler may ask for smaller batches
        batches = padded_batches(seqs, attend, self.window, budget, self.pad_id)
        return [(rows, torch.from_numpy(ids), torch.from_numpy(mask)) for rows, ids, mask in batches]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The bare transformer on one batch: (b, L, h) last hidden states (what a benchmark times alone)."""
        with torch.inference_mode():
            return self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state

    def encode(
        self, seqs: Sequence[Sequence[int]], attend: Sequence[int] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run model input ids (special tokens included) in token-budgeted batches.

        Args:
            seqs: model input ids per sequence.
            attend: per sequence, how many leading tokens are attended (default: all).

        Returns:
            Per sequence: its (len, dim) float32 token vectors (not normalised) and (dim,) unit pooled vector.
        """
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(seqs)
        for rows, ids, mask in self.batches(seqs, attend):
            # the scheduler's turn per forward batch: a caller's other work (a search) runs between two
            with forward_turn(), torch.inference_mode():
                hidden = self.forward(ids, mask)
                tokens, pooled = self._head(hidden, mask.to(self.device))
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                tokens_np = tokens.float().cpu().numpy()
                pooled_np = pooled.cpu().numpy()
            for r, j in enumerate(rows):
                out[j] = (tokens_np[r, : len(seqs[j])], pooled_np[r])
        return out

    def _windows(
        self, docs: Sequence[LoadedDocument]
    ) -> tuple[list[tuple[list[int], np.ndarray]], list[Window], list[list[int]]]:
        tokenized = []
        for d in docs:
            with forward_turn():  # the tokenizer is shared with the caller's other work too
                tokenized.append(self.tokenize(d.text))
        windows = plan_windows([len(ids) for ids, _ in tokenized], self.content, self.stride)
        seqs = [self.prefix + tokenized[w.doc][0][w.start : w.end] + self.suffix for w in windows]
        return tokenized, windows, seqs

    def windows(self) -> WindowEmbedder:
        return HFWindows(self)

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedQuery]:
        """Pooled and token vectors of every query from one batched forward pass (int8 with `query_int8`).

        Returns:
            One `EncodedQuery` per query, in order.

        Raises:
            QueryError: a query is empty or too long.
        """
        seqs, attend = self._query_inputs(queries)
        if not seqs:
            return []
        res = self._query_model().encode(seqs, attend)
        return [self._encoded(seq, rows, pooled) for seq, (rows, pooled) in zip(seqs, res, strict=True)]

    def _query_model(self) -> WindowedModel:
        """The embedder queries run through: this one, or its twin around an int8 copy of the model."""
        if not self.query_int8:
            return self
        with self._int8_lock:
            if self._int8 is None:
                twin = copy.copy(self)  # the same tokenizer, prompts and settings
                twin.query_int8 = False
                twin.model = int8_copy(self.model)
                self._int8 = twin
            return self._int8

    def window_batches(self, docs: Sequence[LoadedDocument]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The exact (ids, mask) batches `embed_documents(docs)` runs through the model, for benchmarks."""
        return [(ids, mask) for _, ids, mask in self.batches(self._windows(docs)[2])]

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        tokenized, windows, seqs = self._windows(docs)
        return stitch_documents(docs, tokenized, windows, self.encode(seqs), len(self.prefix), self.dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        with forward_turn():
            seqs = [self.prefix + self.tokenize(t)[0][: self.content] + self.suffix for t in texts]
        res = self.encode(seqs)
        return np.stack([r[1] for r in res]).astype(np.float32) if res else np.zeros((0, self.dim), np.float32)

    def _check_query(self, query: str, n_tokens: int) -> None:
        if not query.strip():
            raise QueryError("query is empty; pass the question to search for")
        if n_tokens > self.max_query_tokens:
            raise QueryError(
                f"query is {n_tokens} tokens, over the limit of {self.max_query_tokens} "
                "(max_query_tokens / model window); shorten it"
            )


class HFTokenEmbedder(WindowedModel):
    """A transformers encoder or decoder whose last hidden states are the token vectors.

    Pooling comes from the folder's Pooling module (mean, CLS or last token); without one, decoder-only
    models pool the last token (with `<|endoftext|>` appended, as Qwen3-Embedding is trained) and
    encoders the mean. Queries get the folder's "query" prompt, or the configured instruction for
    last-token models.
    """

    def __init__(
        self, settings: Settings | ModelSettings, folder: ModelFolder | None = None, name: str | None = None
    ) -> None:
        """Load the model `settings` names (or the given folder).

        Raises:
            ModelLoadError: it cannot be found or loaded.
        """
        ms = _model_settings(settings)
        folder = folder or ModelFolder.read(resolve_model_path(ms.model))
        tokenizer, model = load_transformer(folder, ms)
        self._build(name or canonical_name(ms.model), tokenizer, model, ms, folder)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        settings: Settings | ModelSettings,
        folder: ModelFolder | None = None,
    ) -> HFTokenEmbedder:
        """Wrap an already-built model (tests build tiny random models this way).

        Args:
            model: a transformers base model (no head).
            tokenizer: its tokenizer.
            settings: model settings (name, pooling, window...).
            folder: what its folder would say (pooling, prompts); default: nothing.

        Returns:
            The embedder.
        """
        self = cls.__new__(cls)
        ms = _model_settings(settings)
        self._build(ms.model, tokenizer, model, ms, folder or ModelFolder(Path("."), {}))
        return self

    def _build(
        self, name: str, tokenizer: Any, model: torch.nn.Module, settings: ModelSettings, folder: ModelFolder
    ) -> None:
        pooling = settings.pooling if settings.pooling != "auto" else folder.pooling
        if pooling is None:
            pooling = "last" if causal_only(model.config) else "mean"
        if pooling == "last":
            eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
            if not isinstance(eot, int) or eot == tokenizer.unk_token_id:
                eot = tokenizer.eos_token_id
            prefix: list[int] = []
            suffix = [int(eot)]
        else:
            cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
            prefix = [int(cls_id)] if cls_id is not None else []
            suffix = [int(sep_id)] if sep_id is not None else []
        doc_prompt = folder.prompt("document", "passage")
        if doc_prompt:
            prefix = prefix + list(tokenizer(doc_prompt, add_special_tokens=False)["input_ids"])
        self.capabilities = Capabilities(
            backend="hf-pooled",
            vector_kind="pooled-hidden",
            pooling=pooling,
            query_tokens=True,
            part_wise=True,
            scheduled=True,
        )
        self.dim = int(model.config.hidden_size)  # type: ignore[union-attr,arg-type]
        self.query_prompt = folder.prompt("query")
        self.query_instruction = settings.query_instruction if pooling == "last" else None
        self._setup(name, tokenizer, model, settings, prefix, suffix, folder.trained_length)

    def _head(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pooling == "last":  # right padding keeps causal states exact; the last attended token pools
            last = mask.sum(1) - 1
            return hidden, hidden[torch.arange(len(hidden), device=hidden.device), last]
        if self.pooling == "cls":
            return hidden, hidden[:, 0]
        return hidden, masked_mean(hidden, mask)

    def query_ids(self, query: str) -> list[int]:
        """Model input ids of a query in its query form (instruction or prompt applied, special tokens added).

        Raises:
            QueryError: empty or too long.
        """
        text = query
        if self.query_instruction:
            text = QUERY_TEMPLATE.format(task=self.query_instruction, query=query)
        elif self.query_prompt:
            text = self.query_prompt + query
        ids, _ = self.tokenize(text)
        self._check_query(query, len(ids))
        return self.prefix_for_query + ids + self.suffix

    @property
    def prefix_for_query(self) -> list[int]:
        """Special tokens before a query (the document prompt is not a query's)."""
        cls_id = self.tokenizer.cls_token_id
        return [int(cls_id)] if self.pooling != "last" and cls_id is not None else []

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        res = self.encode([self.query_ids(q) for q in queries])
        return np.stack([r[1] for r in res]).astype(np.float32) if res else np.zeros((0, self.dim), np.float32)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        ids = self.query_ids(query)
        rows = self.encode([ids])[0][0][len(self.prefix_for_query) : len(ids) - len(self.suffix)]
        return unit_rows(rows)

    def _query_inputs(self, queries: Sequence[str]) -> tuple[list[list[int]], list[int] | None]:
        return [self.query_ids(q) for q in queries], None

    def _encoded(self, seq: Sequence[int], rows: np.ndarray, pooled: np.ndarray) -> EncodedQuery:
        content = np.ascontiguousarray(rows[len(self.prefix_for_query) : len(seq) - len(self.suffix)])
        tokens = torch.nn.functional.normalize(torch.from_numpy(content), dim=-1)
        return EncodedQuery(np.asarray(pooled, dtype=np.float32), tokens.numpy().astype(np.float32))


def load_dense(path: Path) -> tuple[torch.nn.Module, int]:
    """A sentence-transformers/PyLate Dense module from its folder: config.json + linear weights.

    Raises:
        ModelLoadError: missing or inconsistent files.
    """
    try:
        cfg = read_json(path / "config.json")
        linear = torch.nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg.get("bias", True)))
        if (path / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(path / "model.safetensors"))
        else:
            state = torch.load(str(path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        module_name, _, cls_name = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity")).rpartition(
            "."
        )
        activation = vars(importlib.import_module(module_name))[cls_name]()  # the class the folder names
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"Dense module {path}: cannot load ({type(e).__name__}: {e}); re-download the model"
        ) from e
    return torch.nn.Sequential(linear, activation), int(linear.out_features)


class ColBERTEmbedder(WindowedModel):
    """A ColBERT-family model in the sentence-transformers/PyLate folder format.

    Token vectors are the Dense projection of the last hidden states (96/128-d), which is what MaxSim
    was trained on. Documents run as `[CLS] [D] text [SEP]`, queries as `[CLS] [Q] text [SEP]` padded
    with `[MASK]` to the query length (query expansion), with the prefixes and lengths the folder's
    config_sentence_transformers.json records. Pooled vectors are the mean of the token vectors.
    """

    def __init__(self, settings: ModelSettings, folder: ModelFolder, name: str) -> None:
        transformer = folder.module_path(".Transformer") or folder.path
        tokenizer, model = load_transformer(folder, settings, transformer)
        dense_path = folder.module_path(".Dense")
        assert dense_path is not None  # folder.backend said colbert
        self.dense, self.dim = load_dense(dense_path)
        st = folder.st_config
        self.capabilities = Capabilities(
            backend="colbert",
            vector_kind="multivector",
            pooling="token-mean",
            query_tokens=True,
            part_wise=True,
            scheduled=True,
        )
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.query_marker = self._marker(tokenizer, str(st.get("query_prefix", "[unused0]")))
        doc_marker = self._marker(tokenizer, str(st.get("document_prefix", "[unused1]")))
        self.query_length = int(st.get("query_length") or 32)
        self.attend_expansion = bool(st.get("attend_to_expansion_tokens", False))
        mask_id = tokenizer.mask_token_id
        self.expansion_id = int(mask_id if mask_id is not None else tokenizer.pad_token_id or 0)
        self.head_ids = [int(cls_id)] if cls_id is not None else []
        self.tail_ids = [int(sep_id)] if sep_id is not None else []
        trained = st.get("document_length") or folder.trained_length
        self._setup(name, tokenizer, model, settings, self.head_ids + doc_marker, self.tail_ids, trained)
        self.dense = self.dense.to(device=self.device, dtype=self.torch_dtype)
        # a query longer than query_length is kept whole (no expansion) rather than cut: its words all count

    @staticmethod
    def _marker(tokenizer: Any, text: str) -> list[int]:
        ids = tokenizer.convert_tokens_to_ids(text)
        if isinstance(ids, int) and ids != tokenizer.unk_token_id:
            return [ids]
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _head(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.nn.functional.normalize(self.dense(hidden.to(self.torch_dtype)).float(), dim=-1)
        return tokens, masked_mean(tokens, mask)

    def _query_seqs(self, queries: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        seqs, attend = [], []
        for q in queries:
            ids, _ = self.tokenize(q)
            self._check_query(q, len(ids))
            seq = self.head_ids + self.query_marker + ids + self.tail_ids
            full = max(self.query_length, len(seq))
            attend.append(full if self.attend_expansion else len(seq))
            seqs.append(seq + [self.expansion_id] * (full - len(seq)))
        return seqs, attend

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        seqs, attend = self._query_seqs(queries)
        # expansion tokens are query vectors too: the pooled query is the mean of all query_length rows
        res = self.encode(seqs, attend)
        return np.stack([unit_rows(r[0].mean(0)) for r in res]) if res else np.zeros((0, self.dim), np.float32)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        seqs, attend = self._query_seqs([query])
        return unit_rows(self.encode(seqs, attend)[0][0])

    def _query_inputs(self, queries: Sequence[str]) -> tuple[list[list[int]], list[int] | None]:
        return self._query_seqs(queries)

    def _encoded(self, seq: Sequence[int], rows: np.ndarray, pooled: np.ndarray) -> EncodedQuery:
        # expansion tokens are query vectors too: pooled and token vectors both take every row
        return EncodedQuery(unit_rows(rows.mean(0)), unit_rows(rows))


class HFWindows:
    """`WindowEmbedder` over a transformers backend: the same tokenizer, windows and forward pass it uses."""

    def __init__(self, embedder: WindowedModel) -> None:
        self._e = embedder
        self.dim, self.content, self.stride = embedder.dim, embedder.content, embedder.stride

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        with forward_turn():
            return self._e.tokenize(text)

    def embed_windows(self, windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        e, p = self._e, len(self._e.prefix)
        seqs = [e.prefix + [int(i) for i in w] + e.suffix for w in windows]
        out = e.encode(seqs)
        return [(h[p : p + len(w)], pooled) for (h, pooled), w in zip(out, windows, strict=True)]
