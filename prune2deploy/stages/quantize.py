"""Stage 4b: sparse + INT8 (`export.quantize: int8 | int8-static`, CLI `--quantize`); a no-op otherwise.

ONNX Runtime quantization of the exported sparse graph; the encoder's weight MatMuls get
symmetric per-channel INT8 weights (zero point 0, so a pruned weight stays exactly 0):
- `int8`: dynamic, activations quantized on the fly (MatMulInteger / DynamicQuantizeLinear);
- `int8-static`: static QDQ (QuantizeLinear/DequantizeLinear pairs) on the weight MatMuls,
  their input activations' ranges calibrated (`export.calibration`: min-max, or a percentile)
  on `export.calibration_examples` inputs of the task's *train* split — never the dev questions
  the INT8 graph is then scored on; the format OpenVINO and ORT run as INT8. Static also writes
  DeepSparse's layout: per-tensor weights, each MatMul as MatMulInteger → Cast → Mul (`int8_matmulinteger.py`),
  sparse and dense (`*.int8-mmi.onnx`). With `export.qat_epochs`, the
  sparse model is first fine-tuned against exactly this rounding (`qat.py`) and re-exported.
Then, before anything else trusts it:
- sparsity, tensor by tensor: every weight that is zero in the verified fp32 graph is zero in
  its INT8 twin (rounding may add a few zeros; those are counted, never hidden);
- accuracy: the task's own evaluation on the same dev data, run through ONNX Runtime on the
  INT8 graph (and on the fp32 graph, which must match the PyTorch sparse metric).
"""

from __future__ import annotations

import shutil

from ..files import write_json_atomic
from ..graphs.int8 import (
    OnnxAsModel,
    calibration_batches,
    calibration_count,
    check_zeros_kept,
    quantize_int8,
    quantize_int8_static,
)
from ..graphs.int8_matmulinteger import to_matmulinteger
from ..model.load import load_tokenizer
from ..progress import log
from .common import StageContext, setup


NEEDS = ("teacher", "prune", "export")
READS = ("task", "seed", "precision", "attention_dropout", "data", "prune", "export", "threads")  # QAT trains
PARALLEL = False  # on rank 0; QAT's training runs as one process


def run(ctx: StageContext) -> dict:
    recipe, out = ctx.recipe, ctx.out
    mode = recipe.export.quantize
    if mode == "none":
        if recipe.export.dense_int8:
            return _dense_int8_only(ctx)
        write_json_atomic(out / "quantize.json", {"quantize": "none"})
        return {"quantize": "none"}
    import torch

    task, _ = setup(recipe)
    fp32 = ctx.path("export", "path")
    dense = ctx.path("export", "dense_path")
    export_dir = fp32.parent
    train, dev, _ = task.load(recipe)
    tokenizer = load_tokenizer(str(export_dir))
    qat_info = None
    checked = [
        t["onnx_name"]
        for t in ctx.result("export")["per_tensor"].values()
        if t.get("onnx_name") and "[" not in t["onnx_name"]
    ]
    if recipe.export.qat_epochs > 0:  # fine-tune with fake INT8, re-export, quantize that graph
        from ..train import qat
        from .common import load_teacher, prune_masks

        qat_info, checked = qat.finetune(
            recipe, task, load_teacher(ctx, task), ctx.path("prune", "model_dir"), prune_masks(ctx), out
        )
        fp32 = out / "model.qat.onnx"
    # the dense graph is quantized the same way, on the same calibration data: a dense INT8
    # model is what a user could ship without pruning, so it belongs among the "best dense"
    jobs = [(fp32, out / "model.int8.onnx"), (dense, out / "dense.int8.onnx")]
    e = recipe.export
    batches = None
    if mode == "int8-static":
        n = calibration_count(e.calibration, e.calibration_examples)
        if n < e.calibration_examples:
            log(f"quantize: {e.calibration} calibrates on {n} inputs, not {e.calibration_examples} (memory)")
        batches = calibration_batches(task, tokenizer, train, recipe.data.max_length, n=n)
    for src, dst in jobs:
        if batches is not None:
            quantize_int8_static(src, dst, batches, calibration=e.calibration)
        else:
            quantize_int8(src, dst)
    mmi = []  # static: also DeepSparse's layout (per-tensor weights, MatMulInteger → Cast → Mul)
    if batches is not None:
        for src, name in ((fp32, "model"), (dense, "dense")):
            quantize_int8_static(
                src, out / f"{name}.int8-pt.onnx", batches, per_channel=False, calibration=e.calibration
            )
            to_matmulinteger(out / f"{name}.int8-pt.onnx", out / f"{name}.int8-mmi.onnx")
            (out / f"{name}.int8-pt.onnx").unlink()
            mmi.append(out / f"{name}.int8-mmi.onnx")
    for f in export_dir.iterdir():  # tokenizer and config beside the INT8 graph: a self-contained dir
        if f.is_file() and f.suffix != ".onnx" and f.name != "stage.json":
            shutil.copy2(f, out / f.name)
    zeros = check_zeros_kept(fp32, out / "model.int8.onnx", checked)
    if mmi:
        zeros["mmi"] = check_zeros_kept(fp32, mmi[0], checked)
    log(
        f"quantize: {len(checked)} encoder weights INT8, zeros kept; sparsity {zeros['encoder_sparsity_int8']:.4f} (+{zeros['extra_zeros_from_rounding']} zeros from rounding)"  # noqa: E501 - one message/literal
    )

    threads = recipe.threads or torch.get_num_threads()
    metrics = {}
    graphs = [
        ("sparse_int8", out / "model.int8.onnx"),
        ("sparse_fp32_onnx", ctx.path("export", "path")),
        ("dense_int8", out / "dense.int8.onnx"),
    ]
    if mmi:
        graphs += [("sparse_int8_mmi", mmi[0]), ("dense_int8_mmi", mmi[1])]
    if qat_info:
        graphs.append(("sparse_qat_fp32_onnx", fp32))
    for label, path in graphs:
        m, _ = task.evaluate(
            OnnxAsModel(path, threads, task.output_names), tokenizer, dev, recipe.data, description=f"eval {label}"
        )
        metrics[label] = m
    record = {"quantize": mode, "zeros": zeros, "metrics": metrics, "qat": qat_info}
    if batches is not None:
        n = sum(len(next(iter(b.values()))) for b in batches)
        record["calibration"] = {"method": e.calibration, "examples": n, "split": "train"}
    write_json_atomic(out / "quantize.json", record)
    return {
        "quantize": mode,
        "path": "quantize/model.int8.onnx",
        "dense_path": "quantize/dense.int8.onnx",
        "mmi_path": "quantize/model.int8-mmi.onnx" if mmi else None,
        "dense_mmi_path": "quantize/dense.int8-mmi.onnx" if mmi else None,
        "metrics": metrics,
        "encoder_sparsity_int8": zeros["encoder_sparsity_int8"],
        "extra_zeros_from_rounding": zeros["extra_zeros_from_rounding"],
        "tensors": len(checked),
        "qat": qat_info,
    }


def _dense_int8_only(ctx: StageContext) -> dict:
    """Without --quantize: the dense model's calibrated static INT8 (per-channel QDQ, ranges from
    train inputs) alone, the best dense option a user could ship instead of pruning; the bench
    times it on every runtime and scores it on its dev subset (no evaluation here)."""
    recipe, out = ctx.recipe, ctx.out
    e = recipe.export
    task, _ = setup(recipe)
    dense = ctx.path("export", "dense_path")
    train, _, _ = task.load(recipe)
    tokenizer = load_tokenizer(str(dense.parent))
    n = calibration_count(e.calibration, e.calibration_examples)
    batches = calibration_batches(task, tokenizer, train, recipe.data.max_length, n=n)
    quantize_int8_static(dense, out / "dense.int8.onnx", batches, calibration=e.calibration)
    for f in dense.parent.iterdir():  # tokenizer and config beside the graph, as with --quantize
        if f.is_file() and f.suffix != ".onnx" and f.name != "stage.json":
            shutil.copy2(f, out / f.name)
    examples = sum(len(next(iter(b.values()))) for b in batches)
    record = {"quantize": "none", "dense_int8": {"method": "int8-static", "calibration": e.calibration,
                                                 "examples": examples, "split": "train"}}
    write_json_atomic(out / "quantize.json", record)
    log(f"quantize: the dense model's static INT8 (calibrated on {examples} train inputs), the baseline the bench "
        "compares with")
    return {**record, "dense_path": "quantize/dense.int8.onnx"}
