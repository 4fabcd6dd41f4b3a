"""OpenVINO (Apache-2.0) on CPU, with the precision set explicitly.

On AMX/AVX512-BF16 CPUs OpenVINO runs bf16 by default; comparing that with fp32 ORT would be
unfair, so `openvino` pins f32 and `openvino-bf16` is its own row. `openvino-sparse` is f32
with the CPU plugin's sparse-weights decompression enabled, to see whether it helps.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..benchmark import time_calls
from .registry import Runtime


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    import openvino

    return openvino.get_version()


def bench(
    onnx_path, inputs, threads, warmup, iters, min_time_s, precision: str = "f32", sparse_rate: float | None = None
):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({p.get_any_name(): list(inputs[p.get_any_name()].shape) for p in model.inputs})  # fixed shapes
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": int(threads),
        "PERFORMANCE_HINT": "LATENCY",
    }
    if sparse_rate is not None:
        config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = float(sparse_rate)
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]

    def run(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = request.infer({n: x[n] for n in names})
        return [np.asarray(result[o]) for o in compiled.outputs]

    return time_calls(run, inputs, warmup, iters, min_time_s)


RUNTIMES = [
    Runtime("openvino", "fp32", "onnx", available, version, partial(bench, precision="f32")),
    Runtime("openvino-bf16", "bf16", "onnx", available, version, partial(bench, precision="bf16")),
    Runtime("openvino-sparse", "fp32", "onnx", available, version, partial(bench, precision="f32", sparse_rate=0.5)),
]
