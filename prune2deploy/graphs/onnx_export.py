"""ONNX export with optimum's exporter, the sparsity check of an exported graph against the
torch masks, and output parity against PyTorch."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .onnx_sparsity import require_ok, verify
from ..runtimes import onnxruntime as ort_rt
from ..model.inference import logits_of


def export_onnx(model_dir: str | Path, task, opset: int, dest: Path) -> None:
    """Export with optimum into a temp dir, then move model.onnx to `dest`."""
    from ..model.load import load_config, load_model

    compact = bool(getattr(load_config(str(model_dir)), "p2d_structure", None))
    if compact:  # per-layer widths: built by p2d's loader, exported from the model object
        export_model(load_model(str(model_dir), task.auto_class), task.export_task, opset, dest)
        return
    from optimum.exporters.onnx import main_export  # imported first: its import sets its loggers' levels

    with _quiet() as tmp:
        main_export(str(model_dir), tmp, task=task.export_task, opset=opset, do_validation=False, local_files_only=True)
        shutil.move(str(Path(tmp) / "model.onnx"), dest)


def export_model(model, export_task: str, opset: int, dest: Path) -> None:
    """Export a model object the way every shipped graph is exported (optimum, `opset`, the
    model's own attention implementation): what the latency table and the latency loop time."""
    from optimum.exporters.onnx import onnx_export_from_model

    with _quiet() as tmp:
        onnx_export_from_model(model, tmp, opset=opset, task=export_task, do_validation=False)
        shutil.move(str(Path(tmp) / "model.onnx"), dest)


@contextlib.contextmanager
def _quiet():
    """A temp dir for optimum's output, with its and transformers' logging at errors only."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("optimum").setLevel(logging.ERROR)
        hf_logging.set_verbosity_error()
        try:
            yield tmp
        finally:
            hf_logging.set_verbosity(verbosity)


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


def verify_structure(model, onnx_path: Path, widths: dict[str, list[int]]) -> dict:
    """The structured analogue of the zero check: the compact `model` has exactly the kept
    widths, and every one of its encoder Linear weights is an ONNX initializer of that shape
    and content (found by content, as stored: transposed for MatMul). Raises VerificationError."""
    from torch import nn

    from ..errors import VerificationError
    from .onnx_sparsity import _digest, load_initializers
    from ..pruning.masks import _encoder
    from ..pruning.structures import widths_of

    got = widths_of(model)
    if got != widths:
        raise VerificationError(f"export: compact model widths {got} are not the kept structures {widths}")
    stored = {}
    inits = load_initializers(onnx_path)
    for name, arr in inits.items():
        if arr.dtype.kind == "f" and arr.ndim == 2:
            stored.setdefault(_digest(arr), name)
    tensors = []
    for name, mod in _encoder(model).named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        w = mod.weight.detach().numpy()
        found = stored.get(_digest(w.T)) or stored.get(_digest(w))
        if found is None:
            raise VerificationError(
                f"export: encoder weight {name} {tuple(w.shape)} has no ONNX initializer of that shape and content"
            )
        tensors.append({"torch_name": name, "onnx_name": found, "shape": list(w.shape), "numel": int(w.size),
                        "onnx_zeros": int((inits[found] == 0).sum())})
    return {"widths": got, "tensors": tensors}
