"""ONNX Runtime: CPU (graph optimizations on, thread count explicit, fp32) and, where a GPU
and the GPU build exist, the CUDA and TensorRT execution providers."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ..measure.timing import time_calls
from ..errors import UserError
from .registry import Runtime

NAME = "onnxruntime"
PROVIDERS = {
    "onnxruntime": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def available(name: str = NAME) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return PROVIDERS[name][0] in ort.get_available_providers()


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def load(onnx_path: str | Path, threads: int, providers: list[str] | None = None):
    """Return `run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]` for the model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # errors come back as exceptions; keep stderr to one line
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=providers or PROVIDERS[NAME])
    except Exception as e:  # noqa: BLE001 - ORT raises its own types for bad files
        raise UserError(f"{onnx_path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
    names = [i.name for i in sess.get_inputs()]

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, {k: v for k, v in inputs.items() if k in names})

    return run


def bench(onnx_path, inputs, threads, warmup, iters, min_time_s, name: str = NAME):
    run = load(onnx_path, threads, providers=PROVIDERS[name])
    return time_calls(run, inputs, warmup, iters, min_time_s)


def session(onnx_path, threads, name: str = NAME):
    return load(onnx_path, threads, providers=PROVIDERS[name])


RUNTIMES = [
    Runtime(
        n, "fp32", "onnx", partial(available, n), version, partial(bench, name=n),
        device="cpu" if n == NAME else "cuda", licence="MIT", session=partial(session, name=n),
    )
    for n in PROVIDERS
]
