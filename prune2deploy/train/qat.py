"""Quantization-aware fine-tuning (QAT) of a pruned model, matched to the static QDQ graph.

The quantize stage's `int8-static` graphs quantize every weight MatMul: weights symmetric
(scale max|w| / 127, zero point 0) per tensor in the MatMulInteger graph that `p2d package
--int8` ships by default (DeepSparse's layout), per output channel in the QDQ graph; the
MatMul's input activation asymmetric uint8 per tensor (its calibrated range, 0 inside it). During
QAT every Linear (each is a weight MatMul of the graph, the task head's included) runs on
fake-quantized weights (`export.qat_weights`: per_tensor, the
default, or per_channel: the rounding of the graph that ships) and inputs of exactly that form, on the ranges the static
quantizer calibrates on the same train inputs (`calibrate`), with straight-through gradients,
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


def weight_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear of the model: each is a weight MatMul the static quantizer quantizes (the
    encoder's, the pooler's and the task head's alike)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def calibrate(model: nn.Module, linears: dict[str, nn.Module], batches: list[dict], calibration: str = "minmax",
              sample: int = 1 << 20) -> dict[str, tuple[float, float]]:
    """Each Linear's input range as the static quantizer computes it on the same calibration
    inputs: their min and max (`minmax`), or the range holding all but (100 - P)% of the values
    (`percentile-P`, half cut at each end; from a sample of at most `sample` values per input)."""
    from ..graphs.int8 import parse_calibration

    percentile = parse_calibration(calibration)
    seen: dict[str, list] = {n: [] for n in linears}
    gen = torch.Generator().manual_seed(0)

    def hook(name):
        def f(mod, args):
            x = args[0].detach().float().flatten()
            if percentile is None:
                seen[name].append(torch.stack([x.min(), x.max()]))
            else:
                seen[name].append(x[torch.randperm(len(x), generator=gen)[:sample]] if len(x) > sample else x)
        return f

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    was = model.training
    model.eval()
    try:
        for b in batches:
            model(**{k: torch.from_numpy(v) for k, v in b.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    ranges = {}
    for n, vals in seen.items():
        if not vals:
            continue
        if percentile is None:
            v = torch.stack(vals)
            ranges[n] = (float(v[:, 0].min()), float(v[:, 1].max()))
        else:
            x = torch.cat(vals)
            x = x[torch.randperm(len(x), generator=gen)[:sample]] if len(x) > sample else x
            cut = (100.0 - percentile) / 200.0
            ranges[n] = (float(torch.quantile(x, cut)), float(torch.quantile(x, 1 - cut)))
    return ranges


def attach(modules: dict[str, nn.Module], per_channel: bool = False,
           ranges: dict[str, tuple[float, float]] | None = None) -> None:
    """Give each Linear a fake-quantized forward (and activation-range buffers). With `ranges`
    (from `calibrate`), each input range is fixed at the calibrated one, as in the shipped graph;
    without, it follows the training batches (running min/max, EMA)."""
    for name, module in modules.items():
        fixed = ranges is not None and name in ranges
        start = list(ranges[name]) if fixed else [float("inf"), float("-inf")]
        module.register_buffer("qat_range", torch.tensor(start), persistent=False)

        def forward(x, m=module, fixed=fixed):
            if m.training and not fixed:
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

    from ..graphs.int8 import calibration_batches, calibration_count

    e, p = recipe.export, recipe.prune
    student = load_model(str(sparse_dir), task.auto_class, task.num_labels, recipe.attention_dropout)
    tokenizer = load_tokenizer(str(sparse_dir))
    modules = M.prunable_modules(student, p.include_embeddings, p.include_head)
    M.set_masks(modules, masks)
    train, _, _ = task.load(recipe)
    # every weight MatMul of the graph (the head's too), on the activation ranges the static
    # quantizer will calibrate: the same train inputs, the same method
    linears = weight_linears(student)
    batches = calibration_batches(task, tokenizer, train, recipe.data.max_length,
                                  n=calibration_count(e.calibration, e.calibration_examples))
    ranges = calibrate(student, linears, batches, e.calibration)
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
    attach(linears, per_channel=e.qat_weights == "per_channel", ranges=ranges)
    try:
        log_ = fit(student, features, tokenizer, cfg, teacher=teacher if p.kd_hardness > 0 else None, modules=modules)
    finally:
        detach(linears)
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
