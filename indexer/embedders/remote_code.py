"""Models that ship their own code and speak Jina Embeddings v4's `encode_text` API.

Loaded with `trust_remote_code=True` from a hub name or a local folder. Token vectors are the model's
multivector output (`return_multivector=True`, retrieval task, "passage" prompt for documents and
"query" for queries: 128-d for Jina v4); each window is sent as text, and its rows are mapped back to
the document's tokens through the character offsets of the prompt + window text, with the prompt's rows
dropped. Pooled vectors are the single-vector output, truncated (Matryoshka) to the multivector size so
both live in one collection dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from indexer.embedders.base import Capabilities, TokenEmbedder, clean_offsets, stitch, unit_rows
from indexer.embedders.device import pick_device, pick_dtype
from indexer.embedders.folder import ModelFolder
from indexer.embedders.hf import MAX_WINDOW
from indexer.windows import plan_windows
from schemas.errors import ModelLoadError, QueryError
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import ModelSettings

TASK = "retrieval"


class RemoteCodeEmbedder(TokenEmbedder):
    """A remote-code model driven through `encode_text(texts, task, prompt_name, return_multivector, ...)`."""

    def __init__(self, settings: ModelSettings, folder: ModelFolder, name: str) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.name = name
        self.device = pick_device(settings.device)
        self.torch_dtype = pick_dtype(settings.dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder.path), trust_remote_code=True)
            model = AutoModel.from_pretrained(str(folder.path), trust_remote_code=True, dtype=self.torch_dtype)
            self.model = model.to(self.device).eval()
            self._encode_text = self.model.encode_text
        except Exception as e:
            raise ModelLoadError(
                f"model '{settings.model}': cannot load its own code from {folder.path} ({type(e).__name__}: {e}); "
                "a remote-code model must expose Jina Embeddings v4's encode_text API; point --model at such a "
                "folder or hub name"
            ) from e
        cfg = folder.config
        self.passage_prompt = folder.prompt("passage", "document")
        self.query_prompt = folder.prompt("query")
        self.tokenizer.model_max_length = 10**9  # we window ourselves
        dim = cfg.get("multi_vector_projector_dim")
        self.dim = int(dim) if isinstance(dim, int) else self._measure_dim()
        model_max = int(cfg.get("max_position_embeddings") or MAX_WINDOW)
        self.window = min(settings.window_tokens or folder.trained_length or model_max, model_max, MAX_WINDOW)
        prompt_tokens = len(self.tokenize(self.passage_prompt)[0]) + 2  # + the special tokens it may add
        self.content = self.window - prompt_tokens
        if self.content < 8:
            raise ModelLoadError(f"model '{name}': a {self.window}-token window leaves no room for text; raise it")
        self.stride = max(1, int(self.content * (1.0 - settings.window_overlap)))
        self.batch_size = max(1, settings.batch_tokens // self.window)
        self.max_query_tokens = min(settings.max_query_tokens, self.content)
        self.capabilities = Capabilities(
            backend="remote-code", vector_kind="multivector", pooling="model", query_tokens=True
        )

    # --- the model's own API ---------------------------------------------------------------------
    def _call(self, texts: Sequence[str], prompt: str, multivector: bool, dim: int | None = None) -> list[np.ndarray]:
        if not texts:
            return []
        with torch.inference_mode():
            out = self._encode_text(
                texts=list(texts),
                task=TASK,
                prompt_name=prompt,
                return_multivector=multivector,
                truncate_dim=dim,
                batch_size=self.batch_size,
            )
        return [np.asarray(torch.as_tensor(v).float().cpu().numpy(), dtype=np.float32) for v in out]

    def _measure_dim(self) -> int:
        return int(self._call(["a"], "passage", multivector=True)[0].shape[-1])

    # --- contract --------------------------------------------------------------------------------
    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        return list(enc["input_ids"]), clean_offsets(off, len(text))

    def _content_rows(self, rows: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The rows of `text`'s own tokens in a passage output, and their character starts in `text`."""
        full = self.passage_prompt + text
        enc = self.tokenizer(full, return_offsets_mapping=True)
        off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        p = len(self.passage_prompt)
        if len(off) == len(rows):
            keep = off[:, 1] > p  # tokens ending inside the prompt are the prompt's
            return rows[keep], np.maximum(off[keep, 0] - p, 0)
        # the model tokenised differently (extra special tokens): the text's tokens are the last rows
        _, own = self.tokenize(text)
        k = min(len(own), len(rows))
        return rows[len(rows) - k :], own[len(own) - k :, 0]

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        tokenized = [self.tokenize(d.text) for d in docs]
        windows = plan_windows([len(ids) for ids, _ in tokenized], self.content, self.stride)
        texts = []
        for w in windows:
            off = tokenized[w.doc][1]
            texts.append(docs[w.doc].text[off[w.start, 0] : off[w.end - 1, 1]] if w.end > w.start else "")
        multi = self._call(texts, "passage", multivector=True)
        single = self._call(texts, "passage", multivector=False, dim=self.dim)
        out = []
        for k, doc in enumerate(docs):
            off = tokenized[k][1]
            mine = [i for i, w in enumerate(windows) if w.doc == k]
            bounds = np.array([[windows[i].start, windows[i].end] for i in mine], dtype=np.int64).reshape(-1, 2)
            rows = []
            for i in mine:
                w = windows[i]
                base = off[w.start, 0] if w.end > w.start else 0
                vecs, starts = self._content_rows(multi[i], texts[i])
                if len(vecs) == 0:
                    rows.append(np.zeros((w.end - w.start, self.dim), np.float32))
                    continue
                # each document token takes the window row whose token starts where it starts (or just before)
                at = np.searchsorted(starts + base, off[w.start : w.end, 0], side="right") - 1
                rows.append(vecs[np.clip(at, 0, len(vecs) - 1)])
            wp = np.stack([single[i][: self.dim] for i in mine]) if mine else np.zeros((0, self.dim), np.float32)
            out.append(stitch(doc, off, bounds, rows, wp, self.dim))
        return out

    def _check(self, queries: Sequence[str]) -> None:
        for q in queries:
            if not q.strip():
                raise QueryError("query is empty; pass the question to search for")
            n = len(self.tokenize(q)[0])
            if n > self.max_query_tokens:
                raise QueryError(
                    f"query is {n} tokens, over the limit of {self.max_query_tokens} "
                    "(max_query_tokens / model window); shorten it"
                )

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        self._check(queries)
        vecs = self._call(queries, "query", multivector=False, dim=self.dim)
        return unit_rows(np.stack([v[: self.dim] for v in vecs])) if vecs else np.zeros((0, self.dim), np.float32)

    def embed_query_tokens(self, query: str) -> np.ndarray:
        self._check([query])
        return unit_rows(self._call([query], "query", multivector=True)[0])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        cut = []
        for t in texts:
            ids, off = self.tokenize(t)
            cut.append(t[: off[self.content - 1, 1]] if len(ids) > self.content else t)
        vecs = self._call(cut, "passage", multivector=False, dim=self.dim)
        return unit_rows(np.stack([v[: self.dim] for v in vecs])) if vecs else np.zeros((0, self.dim), np.float32)
