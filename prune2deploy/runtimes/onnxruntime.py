"""ONNX Runtime on CPU: graph optimizations on, thread count explicit, fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError

NAME = "onnxruntime"
PRECISION = "fp32"


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def load(onnx_path: str | Path, threads: int, batch_size: int, seq_len: int):
    """Return `run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]` for the model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own types for bad files
        raise UserError(f"{onnx_path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
    names = [i.name for i in sess.get_inputs()]

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, {k: v for k, v in inputs.items() if k in names})

    return run


def input_names(onnx_path: str | Path) -> list[str]:
    import onnxruntime as ort

    return [i.name for i in ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()]
