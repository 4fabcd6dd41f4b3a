"""The fine-tuning loop shared by the teacher and prune stages, and batched inference.

Plain and top-down: one loop, an optional teacher for KD, optional pruning events at given
optimizer steps, masks re-applied after every optimizer step. Knows models and tensors,
not stages.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .progress import Bar

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def autocast(precision: str, device: str = "cpu"):
    """bf16 autocast where the hardware has it (AVX512-BF16/AMX on CPU, Ampere+ on CUDA)."""
    if precision == "auto":
        if device == "cuda":
            use = torch.cuda.is_bf16_supported()
        else:
            use = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
                getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
            )
    else:
        use = precision == "bf16"
    return torch.autocast(device, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def collate(tokenizer):
    """Pad a list of feature dicts to the longest in the batch."""

    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        inputs = [{k: v for k, v in r.items() if k in ("input_ids", "attention_mask", "token_type_ids")} for r in rows]
        verbose = getattr(tokenizer, "deprecation_warnings", {})
        verbose["Asking-to-pad-a-fast-tokenizer"] = True  # pre-tokenized features: pad is right here
        batch = tokenizer.pad(inputs, return_tensors="pt")
        for key in LABEL_KEYS:
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows])
        return dict(batch)

    return fn


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def logits_of(output) -> list[torch.Tensor]:
    if hasattr(output, "start_logits") and output.start_logits is not None:
        return [output.start_logits, output.end_logits]
    return [output.logits]


@torch.no_grad()
def forward_batches(model, features, tokenizer, batch_size: int, description: str, pad_to: int | None = None) -> list[np.ndarray]:
    """Run `model` over a datasets.Dataset of features in fp32; returns one array per output head.

    Token-level heads (QA start/end) are padded with -1e4 to `pad_to` positions.
    """
    model.eval()
    fn = collate(tokenizer)
    outs: list[list[np.ndarray]] = []
    starts = range(0, len(features), batch_size)
    with Bar(description, len(starts)) as bar:
        for i in starts:
            rows = [features[j] for j in range(i, min(i + batch_size, len(features)))]
            batch = fn(rows)
            logits = logits_of(model(**model_inputs(batch)))
            length = batch["input_ids"].shape[1]
            heads = []
            for t in logits:
                a = t.float().cpu().numpy()
                if pad_to is not None and a.ndim == 2 and a.shape[1] == length:
                    a = np.pad(a, ((0, 0), (0, pad_to - length)), constant_values=-1e4)
                heads.append(a)
            outs.append(heads)
            bar.advance()
    return [np.concatenate([o[h] for o in outs]) for h in range(len(outs[0]))] if outs else []


@dataclass
class FitConfig:
    total_steps: int
    batch_size: int
    lr_at: Callable[[int], float]
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"
    seed: int = 0
    kd_temperature: float = 2.0
    kd_hardness: float = 1.0
    prune_events: dict[int, float] = field(default_factory=dict)  # step -> sparsity
    description: str = "train"


def fit(model, features, tokenizer, cfg: FitConfig, teacher=None, modules=None, prune_fn=None, on_step=None) -> dict:
    """Train `model` for `cfg.total_steps` optimizer steps over `features`.

    With `teacher`, the loss is the KD loss; with `modules` (prunable, masks attached), the
    masks are raised at `cfg.prune_events` by `prune_fn(modules, sparsity)` and re-applied
    after every optimizer step. Returns a small log (losses, pruning events).
    """
    from .pruning import distill
    from .pruning import masks as M

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(features, batch_size=cfg.batch_size, shuffle=True, generator=gen, collate_fn=collate(tokenizer), drop_last=len(features) > cfg.batch_size)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(k in n for k in ("bias", "LayerNorm", "layer_norm"))]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in ("bias", "LayerNorm", "layer_norm"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr_at(0))
    if teacher is not None:
        teacher.eval()
    log = {"losses": [], "prune_events": []}
    step = 0
    running = None
    sparsity = M.sparsity_report(M.get_masks(modules))["overall"] if modules is not None else None
    with Bar(cfg.description, cfg.total_steps) as bar:
        while step < cfg.total_steps:
            for batch in loader:
                if step >= cfg.total_steps:
                    break
                if modules is not None and step in cfg.prune_events:
                    prune_fn(modules, cfg.prune_events[step])
                    sparsity = M.sparsity_report(M.get_masks(modules))["overall"]
                    log["prune_events"].append({"step": step, "sparsity": cfg.prune_events[step]})
                model.train()
                batch = {k: v.to(device) for k, v in batch.items()}
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(step)
                with autocast(cfg.precision, device.type):
                    out = model(**batch)
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = logits_of(teacher(**model_inputs(batch)))
                        loss = distill.kd_loss(logits_of(out), t_logits, out.loss, cfg.kd_temperature, cfg.kd_hardness)
                    else:
                        loss = out.loss
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if modules is not None:
                    M.apply_masks(modules)
                step += 1
                value = float(loss.detach())
                running = value if running is None else 0.95 * running + 0.05 * value
                if step % 10 == 0 or step == cfg.total_steps:
                    log["losses"].append({"step": step, "loss": round(running, 5)})
                info = f"loss {running:.3f} lr {cfg.lr_at(step - 1):.1e}"
                if sparsity is not None:
                    info += f" sparsity {sparsity:.3f}"
                bar.advance(info=info)
                if on_step is not None:
                    on_step(step)
    return log
