"""ONNX export with optimum's exporter, the sparsity check of an exported graph against the
torch masks, and output parity against PyTorch."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .onnx_sparsity import require_ok, verify
from .runtimes import onnxruntime as ort_rt
from .inference import logits_of


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
            main_export(
                str(model_dir), tmp, task=task.export_task, opset=opset, do_validation=False, local_files_only=True
            )
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
