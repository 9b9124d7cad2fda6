"""Export a transformers encoder folder to an ONNX model folder chunkless runs with ONNX Runtime.

The bare model (no head) is exported with torch.export (`torch.onnx.export(dynamo=True)`), batch and
sequence length dynamic, its one output the last hidden states; the folder's configuration and
tokenizer files are copied beside it, so pooling, prompts and the trained window stay what the folder
says and `chunkless --model OUT` picks the ONNX backend (`ModelFolder.backend`). `--int8` quantizes
the weights of every MatMul and Gather to int8, per output channel (`onnxruntime.quantization.
quantize_dynamic`: activations quantized per batch at run time), about a quarter of the file.

The export is checked before it is written out: the graph and the torch model run the same batch
(padded, two lengths) and the largest difference of attended hidden states is printed (float32:
about 1e-6; int8: the quantization error).

TorchScript's exporter (`dynamo=False`) is not used: with transformers 5 it bakes the example's
attention mask into the graph, and other masks then give hidden states off by about 2.

    python scripts/export_onnx.py build/minilm-onnx                  # the packaged MiniLM, float32
    python scripts/export_onnx.py build/minilm-onnx-int8 --int8
    python scripts/export_onnx.py OUT --model ~/models/bge-small-en-v1.5
Needs `pip install -e ".[onnx-export]"` (onnx, onnxscript) besides torch and transformers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.embedders import ModelFolder, resolve_model_path
from indexer.onnx_session import onnx_session

# files that carry weights; everything else of a model folder (configs, tokenizer, 1_Pooling/) is copied
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".onnx", ".h5", ".msgpack", ".ot", ".tflite", ".gguf"}
SKIP_DIRS = {"onnx", "openvino", ".git"}
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
SAMPLE = ["How do steam engines turn heat into work?", "A short one."]


class LastHidden(torch.nn.Module):
    """The bare transformer with tensor inputs and the last hidden states as its one output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # BERT-style models take segment ids; others have no such input
            kw["token_type_ids"] = token_type_ids
        return self.model(**kw).last_hidden_state


def copy_folder_files(src: Path, out: Path) -> None:
    """Copy a model folder's configuration and tokenizer files (not its weights) into `out`."""
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if not f.is_file() or f.suffix in WEIGHT_SUFFIXES or SKIP_DIRS & set(rel.parts):
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out / rel)


def sample_batch(tokenizer: Any, inputs: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(SAMPLE, padding=True, return_tensors="pt")
    return {k: enc[k] if k in enc else torch.zeros_like(enc["input_ids"]) for k in inputs}


def export(src: Path, out: Path, int8: bool, opset: int) -> dict[str, object]:
    """Write `out/model.onnx` (float32, or int8 with `int8`) and the folder's other files; returns provenance."""
    from transformers import AutoModel, AutoTokenizer

    folder = ModelFolder.read(src)
    if folder.backend != "hf-pooled":
        raise SystemExit(f"{src}: a {folder.backend} folder; only plain transformers encoders/decoders export")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModel.from_pretrained(str(src), dtype=torch.float32).eval()
    accepted = set(inspect.signature(model.forward).parameters)
    inputs = [k for k in INPUTS if k in accepted]
    batch = sample_batch(tokenizer, inputs)
    wrapped = LastHidden(model)
    b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                tuple(batch[k] for k in inputs),
                str(fp32),
                input_names=inputs,
                output_names=["last_hidden_state"],
                dynamic_shapes=tuple({0: b, 1: s} for _ in inputs),
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
        seconds = time.perf_counter() - t0
        target = out / "model.onnx"
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per channel: one scale per output column; per tensor, MiniLM's token vectors kept a mean
            # cosine of .937 with float32 on a squad2-dev article, per channel .990, at the same size and speed
            quantize_dynamic(
                str(fp32),
                str(target),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gather"],
                per_channel=True,
            )
        else:
            shutil.copy2(fp32, target)
    copy_folder_files(src, out)
    with torch.inference_mode():
        ref = wrapped(*(batch[k] for k in inputs)).numpy()
    got = onnx_session(target, "cpu", None).run(None, {k: batch[k].numpy() for k in inputs})[0]
    mask = batch["attention_mask"].numpy().astype(bool)
    diff = float(np.abs(got - ref)[mask].max())
    norms = np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1)
    cos = float(np.mean((np.sum(got * ref, -1) / norms)[mask]))
    info: dict[str, object] = {
        "source": str(src),
        "dtype": "int8 (dynamic, per channel: MatMul, Gather weights)" if int8 else "float32",
        "opset": opset,
        "inputs": inputs,
        "torch": torch.__version__,
        "export_seconds": round(seconds, 1),
        "max_abs_diff_to_torch": diff,
        "mean_token_cosine_to_torch": cos,
    }
    (out / "onnx_export.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the ONNX model folder to write")
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="source folder or name")
    ap.add_argument("--int8", action="store_true", help="quantize weights to int8 (dynamic quantization)")
    ap.add_argument("--opset", type=int, default=18)
    args = ap.parse_args()
    info = export(resolve_model_path(args.model), args.out, args.int8, args.opset)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
