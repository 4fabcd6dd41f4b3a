"""OpenVINO (Apache-2.0) on CPU, with the precision set explicitly.

On AMX/AVX512-BF16 CPUs OpenVINO runs bf16 by default; comparing that with fp32 ORT would be
unfair, so `openvino` pins f32 and `openvino-bf16` is its own row; on a CPU without bf16
OpenVINO quietly runs f32, so that row is reported as "not engaged" instead of timed (it would
be the fp32 row again under a bf16 label). `openvino-sparse` is f32
with the CPU plugin's sparse-weights decompression enabled; the compiled model's runtime info
says which kernel each weight layer runs, and a row where no sparse kernel ran is reported as
"not engaged" instead of timed (the decompression takes INT8 weights on CPUs with AMX).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..measure.timing import time_calls
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


def fully_connected_kernels(compiled) -> set[str]:
    """The primitive each weight layer of a compiled model runs (its runtime info), e.g.
    brgemm_avx2_f32; a sparse kernel names itself ("..._sparse_...")."""
    kinds = set()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            kinds.add(rt["primitiveType"].astype(str) if "primitiveType" in rt else "unknown")
    return kinds


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
    runs = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what it runs, not what was asked
    if precision == "bf16" and runs != "bf16":
        raise RuntimeError(
            f"OpenVINO bf16 not engaged: this CPU has no bf16 support, it runs {runs} (the openvino row); not timed"
        )
    if sparse_rate is not None:
        kernels = fully_connected_kernels(compiled)
        if not any("sparse" in k for k in kernels):
            ran = ", ".join(sorted(kernels)) or "none"
            raise RuntimeError(
                f"OpenVINO sparse weights not engaged: its FullyConnected layers run {ran} "
                "(the decompression takes INT8 weights on a CPU with AMX); not timed"
            )
    return time_calls(_runner(compiled), inputs, warmup, iters, min_time_s)


def session(onnx_path, threads, precision: str = "f32"):
    """The model compiled with dynamic shapes: any batch and length (the task's accuracy)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads)}
    return _runner(core.compile_model(core.read_model(str(onnx_path)), "CPU", config))


def _runner(compiled):
    """`run(inputs) -> outputs` on a compiled model (its own inputs taken from the dict)."""
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]

    def run(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = request.infer({n: x[n] for n in names})
        return [np.asarray(result[o]) for o in compiled.outputs]

    return run


LICENCE = "Apache-2.0"
RUNTIMES = [
    Runtime("openvino", "fp32", "onnx", available, version, partial(bench, precision="f32"), licence=LICENCE,
            session=partial(session, precision="f32")),
    Runtime("openvino-bf16", "bf16", "onnx", available, version, partial(bench, precision="bf16"), licence=LICENCE,
            session=partial(session, precision="bf16")),
    Runtime(  # timed only where its sparse kernel ran (else the row says "not engaged")
        "openvino-sparse", "fp32", "onnx", available, version, partial(bench, precision="f32", sparse_rate=0.5),
        skips_zeros=True, licence=LICENCE,
    ),
]
