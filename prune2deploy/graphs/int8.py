"""INT8 graphs from ONNX Runtime's quantizers (dynamic, static QDQ), with symmetric INT8
weights so a pruned weight stays exactly zero; the zero check of an INT8 graph against its
fp32 source, tensor by tensor; and an ONNX graph wrapped as a model for the tasks' evaluate()."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import VerificationError

CALIBRATION_EXAMPLES = 64
# ORT's histogram calibrators (percentile) hold every calibration input's intermediate outputs in
# memory until the end: 256 squad inputs of 256 tokens took > 24 GiB and were killed; 64 ran.
PERCENTILE_MAX_EXAMPLES = 64
OUTPUTS_FP32 = "OpTypesToExcludeOutputQuantization"  # ORT quantize_static's extra option


def parse_calibration(calibration: str) -> float | None:
    """`minmax` -> None; `percentile-P` (50 < P <= 100) -> P; anything else: ValueError."""
    if calibration == "minmax":
        return None
    try:
        p = float(calibration.removeprefix("percentile-")) if calibration.startswith("percentile-") else None
    except ValueError:
        p = None
    if p is None or not 50.0 < p <= 100.0:
        raise ValueError(f"minmax or percentile-P with 50 < P <= 100, not '{calibration}'")
    return p


def calibration_count(calibration: str, requested: int) -> int:
    """How many inputs a calibration takes: all asked for min-max (its ranges are running
    min/max), at most `PERCENTILE_MAX_EXAMPLES` for a percentile (see above)."""
    return requested if calibration == "minmax" else min(requested, PERCENTILE_MAX_EXAMPLES)


@contextlib.contextmanager
def _root_logger_errors_only():
    """ORT's quantizers log a "consider pre-processing" hint on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)



def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _root_logger_errors_only():
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8
        )



def calibration_batches(
    task, tokenizer, examples, seq_len: int, batch_size: int = 8, n: int = CALIBRATION_EXAMPLES
) -> list[dict]:
    """`n` inputs of the task (from `examples`, one of its splits), in its own input shape, in batches."""
    samples = task.sample_inputs(examples, n)
    return [
        task.encode(tokenizer, samples[i : i + batch_size], len(samples[i : i + batch_size]), seq_len)
        for i in range(0, len(samples), batch_size)
    ]



def quantize_int8_static(
    src: Path, dst: Path, batches: list[dict], per_channel: bool = True, calibration: str = "minmax"
) -> None:
    """Static QDQ INT8: weights symmetric per channel (or per tensor, the layout DeepSparse runs:
    `int8_matmulinteger.py`), activations uint8 with ranges from `batches`: their min and max
    (`minmax`), or the range holding all but a share of their values (`percentile-99.99`:
    0.01% cut, half at each end; outliers no longer set the step of every other value)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    graph = onnx.load(str(src), load_external_data=False).graph
    # a graph's own inputs only: a compact model with no attention left has no attention_mask
    inputs = {i.name for i in graph.input}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {k: v for k, v in batch.items() if k in inputs}

    percentile = parse_calibration(calibration)
    method, calib_options = CalibrationMethod.MinMax, {}
    if percentile is not None:
        method = CalibrationMethod.Percentile
        calib_options = {"CalibPercentile": percentile, "CalibTensorRangeSymmetric": False}
    weights = {i.name for i in graph.initializer}
    # the weight MatMuls only (the Linears, pruned or not): attention's activation x activation
    # MatMuls stay fp32, as QAT (`qat.py`) models it
    nodes = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    with _root_logger_errors_only():
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=method,
            # per tensor (DeepSparse's layout, as SparseML exports it): the MatMul's output stays
            # fp32 into the bias Add; per channel keeps ORT's default (its output re-quantized)
            extra_options={
                "WeightSymmetric": True,
                **calib_options,
                **({} if per_channel else {OUTPUTS_FP32: ["MatMul"]}),
            },
        )



def check_zeros_kept(fp32_path: Path, int8_path: Path, tensors: list[str]) -> dict:
    """For each fp32 initializer in `tensors`: its INT8 twin (`<name>_quantized`) is zero
    wherever it was zero. Returns per-tensor counts; raises VerificationError on a lost zero."""
    from .onnx_sparsity import load_initializers

    f32, q8 = load_initializers(fp32_path), load_initializers(int8_path)
    per, zeros, total, extra = {}, 0, 0, 0
    for name in tensors:
        qname = f"{name}_quantized"
        if qname not in q8:
            raise VerificationError(f"INT8 graph has no quantized twin of {name}")
        w, q = f32[name], q8[qname]
        if q.shape != w.shape:
            raise VerificationError(f"{qname}: shape {q.shape} != {w.shape}")
        lost = int(((w == 0) & (q != 0)).sum())
        if lost:
            raise VerificationError(f"{qname}: {lost} pruned weights became non-zero after quantization")
        z = int((q == 0).sum())
        per[name] = {"numel": int(q.size), "zeros_fp32": int((w == 0).sum()), "zeros_int8": z, "dtype": str(q.dtype)}
        zeros, total, extra = zeros + z, total + int(q.size), extra + z - int((w == 0).sum())
    return {
        "tensors": per,
        "encoder_sparsity_int8": zeros / total if total else 0.0,
        "extra_zeros_from_rounding": extra,
    }



class OnnxAsModel:
    """Just enough of a transformers model for the tasks' evaluate(): eval(), __call__(**tensors)."""

    def __init__(self, path: Path, threads: int, output_names: tuple[str, ...], session=None, config=None):
        """`session(path, threads) -> run`: the runtime to run it on (default ONNX Runtime);
        `config`: the model's (default: the config.json beside the graph, as export writes it),
        which a task's evaluation may read (token classification: its label names)."""
        from ..runtimes import onnxruntime as ort_rt

        self.run = (session or ort_rt.load)(path, threads)
        self.output_names = output_names
        self.config = config if config is not None else _config_beside(Path(path))

    def eval(self):
        return self

    def __call__(self, **kw):
        import torch

        outs = self.run({k: v.cpu().numpy().astype(np.int64) for k, v in kw.items()})
        return SimpleNamespace(**{n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)})


def _config_beside(path: Path):
    if not (path.parent / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path.parent), trust_remote_code=False)
