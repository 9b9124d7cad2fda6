"""ONNX Runtime inference sessions, made one way for every ONNX model chunkless runs.

`onnx_session` picks the execution provider from the `device` setting, bounds the CPU threads, and
turns a missing or unreadable model file into a `ModelLoadError` that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from schemas.errors import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def onnx_session(model_path: Path, device: str, threads: int | None) -> onnxruntime.InferenceSession:
    """An inference session over one .onnx file.

    Args:
        model_path: the .onnx file.
        device: "cpu", "cuda" or "auto" (CUDA when ONNX Runtime has its CUDA provider, else the CPU).
        threads: intra-op CPU threads (None: ONNX Runtime's default, one per physical core).

    Returns:
        The session, graph optimisations on.

    Raises:
        ModelLoadError: the file is missing or not a loadable model, or device=cuda without a CUDA provider.
    """
    import onnxruntime as ort

    if not model_path.is_file():
        raise ModelLoadError(f"ONNX model {model_path}: no such file; point --model at a folder holding model.onnx")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ModelLoadError(
            f"device=cuda but this onnxruntime has no CUDA provider (it has {', '.join(available)}); install "
            "onnxruntime-gpu or set CHUNKLESS_DEVICE=cpu"
        )
    providers = [CUDA, CPU] if device in ("cuda", "auto") and CUDA in available else [CPU]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers and fallbacks are not the user's to act on
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle worker threads spin by default: on a shared machine that burns the cores the store and the
    # scorer need between forward passes (the same effect README "Speed" found with OpenBLAS' threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile classes
        raise ModelLoadError(
            f"ONNX model {model_path}: cannot load ({type(e).__name__}: {e}); re-export or re-download the model"
        ) from e
