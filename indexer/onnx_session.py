"""One place that opens ONNX Runtime sessions: providers, threads and graph optimisation chosen once.

ONNX Runtime runs the int8 model files some PyPI packages ship (the reader's cross-encoder); torch
cannot load them. A session is created per model file and shared: `InferenceSession.run` is safe to
call from several threads at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from schemas.errors import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime


def onnx_session(model_path: Path, device: str, threads: int | None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session over `model_path`.

    Args:
        model_path: the .onnx file.
        device: "cpu", "cuda" or "auto" (CUDA when ONNX Runtime has its CUDA provider, else the CPU).
        threads: intra-op threads; None: ONNX Runtime's default (one per core). Inter-op work runs on
            one thread: these models are a single chain of layers.

    Returns:
        The session, with every graph optimisation on.

    Raises:
        ModelLoadError: onnxruntime is not installed, the file is missing or unreadable, or "cuda" was
            asked for and this onnxruntime build has no CUDA provider.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelLoadError(
            f"{model_path}: an ONNX model needs onnxruntime; install it (pip install onnxruntime)"
        ) from e
    if not model_path.is_file():
        raise ModelLoadError(f"{model_path}: no such ONNX model file; check the model folder")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            f"{model_path}: device=cuda but this onnxruntime has no CUDA provider; install onnxruntime-gpu "
            "or use device cpu"
        )
    use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # warnings about unused initialisers are noise to a user
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for corrupt or unsupported files
        raise ModelLoadError(f"{model_path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e
