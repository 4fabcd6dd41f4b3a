"""Stage 4: ONNX export of the sparse and dense models (optimum's exporter, opset 14).

Writes `export/model.onnx` (sparse) and `export/dense.onnx` with the tokenizer and config
beside them; verifies, tensor by tensor, that every pruned weight's ONNX initializer has the
torch mask's zeros (the stage fails otherwise), and that ONNX outputs match PyTorch's on
real task inputs within `export.atol`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import VerificationError
from ..files import inside
from ..models import load_model, load_tokenizer
from ..onnx_sparsity import require_ok, verify
from ..pruning import masks as M
from ..runtimes import onnxruntime as ort_rt
from ..training import logits_of
from .common import prune_masks, setup


def export_onnx(model_dir: str | Path, task, opset: int, dest: Path) -> None:
    """Export with optimum into a temp dir, then move model.onnx to `dest`."""
    import logging
    import warnings

    from optimum.exporters.onnx import main_export
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("optimum").setLevel(logging.ERROR)
        hf_logging.set_verbosity_error()
        try:
            main_export(str(model_dir), tmp, task=task.export_task, opset=opset, do_validation=False, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        shutil.move(str(Path(tmp) / "model.onnx"), dest)


def verify_against_masks(model, masks: dict, onnx_path: Path) -> dict:
    """Every masked weight of `model` against its ONNX initializer, tensor by tensor; raises
    VerificationError on a mismatch, returns the report."""
    params = dict(model.named_parameters())
    report = verify(onnx_path, {k: params[k].detach().numpy() for k in masks}, {k: v.numpy() for k, v in masks.items()})
    require_ok(report, onnx_path.name)
    return report


@torch.no_grad()
def parity(model, onnx_path: Path, inputs: dict[str, np.ndarray], threads: int) -> float:
    model.eval()
    ref = [t.float().numpy() for t in logits_of(model(**{k: torch.from_numpy(v) for k, v in inputs.items()}))]
    run = ort_rt.load(onnx_path, threads or torch.get_num_threads())
    got = run(inputs)
    return max(float(np.abs(a - b).max()) for a, b in zip(ref, got))


def run(recipe, out: Path, upstream: dict, run_dir: Path, key: str) -> dict:
    task, _ = setup(recipe)
    _, dev, _ = task.load(recipe)
    sparse_dir = inside(run_dir, upstream["prune"]["result"]["model_dir"], "prune record model_dir")
    dense_dir = upstream["teacher"]["result"]["model_dir"]
    export_onnx(sparse_dir, task, recipe.export.opset, out / "model.onnx")
    export_onnx(dense_dir, task, recipe.export.opset, out / "dense.onnx")
    tokenizer = load_tokenizer(sparse_dir)
    tokenizer.save_pretrained(out)
    sparse = load_model(sparse_dir, task.auto_class, task.num_labels)
    sparse.config.save_pretrained(out)

    masks = prune_masks(run_dir, upstream)
    report = verify_against_masks(sparse, masks, out / "model.onnx")
    nm = M.parse_pattern(recipe.prune.pattern)
    if nm:  # ONNX zeros equal the masks tensor by tensor (just verified), so the pattern holds there too
        try:
            M.check_pattern(masks, *nm)
        except AssertionError as e:
            raise VerificationError(f"export: {recipe.prune.pattern} pattern broken: {e}") from None

    samples = task.sample_inputs(dev, recipe.export.parity_examples)
    seq = min(recipe.data.max_length, 256)
    inputs = task.encode(tokenizer, samples, len(samples), seq)
    diffs = {"sparse": parity(sparse, out / "model.onnx", inputs, recipe.threads)}
    dense = load_model(dense_dir, task.auto_class, task.num_labels)
    diffs["dense"] = parity(dense, out / "dense.onnx", inputs, recipe.threads)
    for name, diff in diffs.items():
        if not diff <= recipe.export.atol:
            raise VerificationError(f"export: {name} ONNX outputs differ from PyTorch by {diff:.2e} > atol {recipe.export.atol:g}")
    return {
        "path": "export/model.onnx",
        "dense_path": "export/dense.onnx",
        "opset": recipe.export.opset,
        "encoder_sparsity": report["encoder_sparsity"],
        "mask_sparsity": report["mask_sparsity"],
        "tensors_verified": len(report["tensors"]),
        "pattern": recipe.prune.pattern,
        "per_tensor": {t["torch_name"]: {"onnx_name": t["onnx_name"], "onnx_zeros": t["onnx_zeros"], "mask_zeros": t["mask_zeros"], "numel": t["numel"]} for t in report["tensors"]},
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_dense": diffs["dense"],
        "atol": recipe.export.atol,
        "parity_inputs": {"examples": len(samples), "seq_len": seq},
    }
