"""Quantization-aware fine-tuning (QAT) of a pruned model, matched to the static QDQ graph.

The quantize stage's `int8-static` graphs quantize every weight MatMul: weights symmetric
(scale max|w| / 127, zero point 0) per tensor in the MatMulInteger graph that `p2d package
--int8` ships by default (DeepSparse's layout), per output channel in the QDQ graph; the
MatMul's input activation asymmetric uint8 per tensor (min-max range, 0 inside it). During QAT
each prunable Linear runs on fake-quantized weights (`export.qat_weights`: per_tensor, the
default, or per_channel: the rounding of the graph that ships) and inputs of exactly that form,
with straight-through gradients,
so the fine-tuning learns weights that survive the rounding. A pruned weight fake-quantizes
to 0 (0 / s = 0) and the masks are re-applied after every step as in pruning. `detach`
returns the plain Linears; the weights stay fp32, on (or next to) the INT8 grid, and the
static quantizer then rounds them to the same values.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MOMENTUM = 0.01  # running min/max of the activations (EMA), like an observer


def fake_quant_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    absmax = w.detach().abs().amax(dim=1, keepdim=True) if per_channel else w.detach().abs().amax()
    s = absmax.clamp(min=1e-12) / 127.0
    q = torch.clamp(torch.round(w / s), -127, 127) * s
    return w + (q - w).detach()  # straight-through estimator


def fake_quant_act(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = max(hi - lo, 1e-8) / 255.0
    zp = round(-lo / s)
    q = (torch.clamp(torch.round(x / s) + zp, 0, 255) - zp) * s
    return x + (q - x).detach()


def attach(modules: dict[str, nn.Module], per_channel: bool = False) -> None:
    """Give each Linear a fake-quantized forward (and activation-range buffers)."""
    for module in modules.values():
        module.register_buffer("qat_range", torch.tensor([float("inf"), float("-inf")]), persistent=False)

        def forward(x, m=module):
            if m.training:
                with torch.no_grad():
                    lo, hi = x.min().float(), x.max().float()
                    r = m.qat_range
                    if torch.isinf(r[0]):
                        r.copy_(torch.stack([lo, hi]))
                    else:
                        r.mul_(1 - MOMENTUM).add_(torch.stack([lo, hi]) * MOMENTUM)
            lo, hi = (float(v) for v in m.qat_range)
            xq = fake_quant_act(x, lo, hi) if lo < hi else x
            return F.linear(xq, fake_quant_weight(m.weight, per_channel), m.bias)

        module.forward = forward


def detach(modules: dict[str, nn.Module]) -> None:
    for module in modules.values():
        if "forward" in module.__dict__:
            del module.forward
        if hasattr(module, "qat_range"):
            del module._buffers["qat_range"]


def finetune(recipe, task, teacher, sparse_dir, masks: dict, out: Path) -> tuple[dict, list[str]]:
    """`export.qat_epochs` of KD fine-tuning of the sparse model in `sparse_dir` with fake INT8
    (`attach`), `masks` held; the result is saved (`out/qat_model`), exported to
    `out/model.qat.onnx` and its sparsity verified against the masks tensor by tensor, as the
    export stage does. Returns (info, the checked ONNX weight names)."""
    from ..model.load import load_model, load_tokenizer
    from ..graphs.onnx_export import export_onnx, verify_against_masks
    from ..pruning import masks as M
    from .loop import FitConfig, fit

    e, p = recipe.export, recipe.prune
    student = load_model(str(sparse_dir), task.auto_class, task.num_labels, recipe.attention_dropout)
    tokenizer = load_tokenizer(str(sparse_dir))
    modules = M.prunable_modules(student, p.include_embeddings, p.include_head)
    M.set_masks(modules, masks)
    train, _, _ = task.load(recipe)
    features = task.train_features(tokenizer, train, recipe.data)
    total = max(1, round(e.qat_epochs * max(1, len(features) // p.batch_size)))
    cfg = FitConfig(
        total_steps=total,
        batch_size=p.batch_size,
        lr_at=lambda step: e.qat_lr * (1 - step / total),
        precision=recipe.precision,
        seed=recipe.seed + 7,
        kd_temperature=p.kd_temperature,
        kd_hardness=p.kd_hardness,
        description="QAT (fake INT8)",
    )
    attach(modules, per_channel=e.qat_weights == "per_channel")
    try:
        log_ = fit(student, features, tokenizer, cfg, teacher=teacher if p.kd_hardness > 0 else None, modules=modules)
    finally:
        detach(modules)
    student.save_pretrained(out / "qat_model", safe_serialization=True)
    tokenizer.save_pretrained(out / "qat_model")
    export_onnx(out / "qat_model", task, e.opset, out / "model.qat.onnx")
    report = verify_against_masks(student, masks, out / "model.qat.onnx")
    info = {
        "epochs": e.qat_epochs,
        "steps": total,
        "lr": e.qat_lr,
        "weights": e.qat_weights,
        "final_loss": log_["losses"][-1]["loss"] if log_["losses"] else None,
        "encoder_sparsity": report["encoder_sparsity"],
        "model_dir": "quantize/qat_model",
    }
    return info, [t["onnx_name"] for t in report["tensors"] if "[" not in t["onnx_name"]]
