"""Stage 4b: sparse + INT8 (`export.quantize: int8 | int8-static`, CLI `--quantize`); a no-op otherwise.

ONNX Runtime quantization of the exported sparse graph; the encoder's weight MatMuls get
symmetric per-channel INT8 weights (zero point 0, so a pruned weight stays exactly 0):
- `int8`: dynamic, activations quantized on the fly (MatMulInteger / DynamicQuantizeLinear);
- `int8-static`: static QDQ (QuantizeLinear/DequantizeLinear pairs) on the weight MatMuls,
  their input activations' ranges calibrated (min-max) on `CALIBRATION_EXAMPLES` dev inputs
  of the task; the format DeepSparse and OpenVINO read as INT8. With `export.qat_epochs`, the
  sparse model is first fine-tuned against exactly this rounding (`qat.py`) and re-exported.
Then, before anything else trusts it:
- sparsity, tensor by tensor: every weight that is zero in the verified fp32 graph is zero in
  its INT8 twin (rounding may add a few zeros; those are counted, never hidden);
- accuracy: the task's own evaluation on the same dev data, run through ONNX Runtime on the
  INT8 graph (and on the fp32 graph, which must match the PyTorch sparse metric).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import VerificationError
from ..files import write_json_atomic
from ..models import load_tokenizer
from ..progress import log
from .common import setup

MODES = ("none", "int8", "int8-static")
CALIBRATION_EXAMPLES = 64


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
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8)


def calibration_batches(task, tokenizer, dev, seq_len: int, batch_size: int = 8) -> list[dict]:
    """`CALIBRATION_EXAMPLES` dev inputs of the task, in its own input shape, in batches."""
    samples = task.sample_inputs(dev, CALIBRATION_EXAMPLES)
    return [task.encode(tokenizer, samples[i:i + batch_size], len(samples[i:i + batch_size]), seq_len) for i in range(0, len(samples), batch_size)]


def quantize_int8_static(src: Path, dst: Path, batches: list[dict]) -> None:
    """Static QDQ INT8: weights symmetric per channel, activations uint8 with ranges from `batches`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    # the weight MatMuls only (the Linears, pruned or not): attention's activation x activation
    # MatMuls stay fp32, as QAT (`qat.py`) models it
    nodes = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    with _root_logger_errors_only():
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True})


def check_zeros_kept(fp32_path: Path, int8_path: Path, tensors: list[str]) -> dict:
    """For each fp32 initializer in `tensors`: its INT8 twin (`<name>_quantized`) is zero
    wherever it was zero. Returns per-tensor counts; raises VerificationError on a lost zero."""
    from ..onnx_sparsity import load_initializers

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
    return {"tensors": per, "encoder_sparsity_int8": zeros / total if total else 0.0, "extra_zeros_from_rounding": extra}


class OnnxAsModel:
    """Just enough of a transformers model for the tasks' evaluate(): eval(), __call__(**tensors)."""

    def __init__(self, path: Path, threads: int, output_names: tuple[str, ...]):
        from ..runtimes import onnxruntime as ort_rt

        self.run = ort_rt.load(path, threads)
        self.output_names = output_names

    def eval(self):
        return self

    def __call__(self, **kw):
        import torch

        outs = self.run({k: v.cpu().numpy().astype(np.int64) for k, v in kw.items()})
        return SimpleNamespace(**{n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)})


def run(recipe, out: Path, upstream: dict, run_dir: Path, key: str) -> dict:
    mode = recipe.export.quantize
    if mode == "none":
        write_json_atomic(out / "quantize.json", {"quantize": "none"})
        return {"quantize": "none"}
    import torch

    task, _ = setup(recipe)
    export_dir = run_dir / "export"
    fp32 = export_dir / "model.onnx"
    _, dev, _ = task.load(recipe)
    tokenizer = load_tokenizer(str(export_dir))
    qat_info = None
    checked = [t["onnx_name"] for t in upstream["export"]["result"]["per_tensor"].values() if t.get("onnx_name") and "[" not in t["onnx_name"]]
    if recipe.export.qat_epochs > 0:  # fine-tune with fake INT8, re-export, quantize that graph
        qat_info, checked = quantization_aware_finetune(recipe, task, upstream, run_dir, out)
        fp32 = out / "model.qat.onnx"
    # the dense graph is quantized the same way, on the same calibration data: a dense INT8
    # model is what a user could ship without pruning, so it belongs among the "best dense"
    jobs = [(fp32, out / "model.int8.onnx"), (export_dir / "dense.onnx", out / "dense.int8.onnx")]
    batches = calibration_batches(task, tokenizer, dev, recipe.data.max_length) if mode == "int8-static" else None
    for src, dst in jobs:
        quantize_int8_static(src, dst, batches) if batches is not None else quantize_int8(src, dst)
    for f in export_dir.iterdir():  # tokenizer and config beside the INT8 graph: a self-contained dir
        if f.is_file() and f.suffix != ".onnx" and f.name != "stage.json":
            shutil.copy2(f, out / f.name)
    zeros = check_zeros_kept(fp32, out / "model.int8.onnx", checked)
    log(f"quantize: {len(checked)} encoder weights INT8, zeros kept; sparsity {zeros['encoder_sparsity_int8']:.4f} (+{zeros['extra_zeros_from_rounding']} zeros from rounding)")

    threads = recipe.threads or torch.get_num_threads()
    metrics = {}
    graphs = [("sparse_int8", out / "model.int8.onnx"), ("sparse_fp32_onnx", export_dir / "model.onnx"), ("dense_int8", out / "dense.int8.onnx")]
    if qat_info:
        graphs.append(("sparse_qat_fp32_onnx", fp32))
    for label, path in graphs:
        m, _ = task.evaluate(OnnxAsModel(path, threads, task.output_names), tokenizer, dev, recipe.data, description=f"eval {label}")
        metrics[label] = m
    write_json_atomic(out / "quantize.json", {"quantize": mode, "zeros": zeros, "metrics": metrics, "qat": qat_info})
    return {"quantize": mode, "path": "quantize/model.int8.onnx", "dense_path": "quantize/dense.int8.onnx", "metrics": metrics, "encoder_sparsity_int8": zeros["encoder_sparsity_int8"],
            "extra_zeros_from_rounding": zeros["extra_zeros_from_rounding"], "tensors": len(checked), "qat": qat_info}


def quantization_aware_finetune(recipe, task, upstream: dict, run_dir: Path, out: Path) -> tuple[dict, list[str]]:
    """`export.qat_epochs` of KD fine-tuning of the sparse model with fake INT8 (`qat.py`),
    masks held; the result is saved (`quantize/qat_model`), exported to `model.qat.onnx`
    and its sparsity verified against the masks tensor by tensor, as the export stage does."""
    from .. import qat
    from ..files import inside
    from ..models import load_model
    from ..pruning import masks as M
    from ..training import FitConfig, fit
    from .common import load_teacher, prune_masks, train_data
    from .export import export_onnx, verify_against_masks

    e, p = recipe.export, recipe.prune
    sparse_dir = inside(run_dir, upstream["prune"]["result"]["model_dir"], "prune record model_dir")
    teacher = load_teacher(upstream, task)
    student = load_model(str(sparse_dir), task.auto_class, task.num_labels, recipe.attention_dropout)
    tokenizer = load_tokenizer(str(sparse_dir))
    masks = prune_masks(run_dir, upstream)
    modules = M.prunable_modules(student, p.include_embeddings, p.include_head)
    M.set_masks(modules, masks)
    features, _, _ = train_data(recipe, task, tokenizer)
    total = max(1, round(e.qat_epochs * max(1, len(features) // p.batch_size)))
    cfg = FitConfig(total_steps=total, batch_size=p.batch_size, lr_at=lambda step: e.qat_lr * (1 - step / total), precision=recipe.precision, seed=recipe.seed + 7,
                    kd_temperature=p.kd_temperature, kd_hardness=p.kd_hardness, description="QAT (fake INT8)")
    qat.attach(modules)
    try:
        log_ = fit(student, features, tokenizer, cfg, teacher=teacher if p.kd_hardness > 0 else None, modules=modules)
    finally:
        qat.detach(modules)
    student.save_pretrained(out / "qat_model", safe_serialization=True)
    tokenizer.save_pretrained(out / "qat_model")
    export_onnx(out / "qat_model", task, e.opset, out / "model.qat.onnx")
    report = verify_against_masks(student, masks, out / "model.qat.onnx")
    info = {"epochs": e.qat_epochs, "steps": total, "lr": e.qat_lr, "final_loss": log_["losses"][-1]["loss"] if log_["losses"] else None,
            "encoder_sparsity": report["encoder_sparsity"], "model_dir": "quantize/qat_model"}
    return info, [t["onnx_name"] for t in report["tensors"] if "[" not in t["onnx_name"]]
