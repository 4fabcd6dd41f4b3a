"""Mask bookkeeping: which tensors are prunable, masks as buffers beside the weights.

Each prunable module gets a non-persistent buffer `weight_mask` (1 keep, 0 pruned). Masks are
re-applied after every optimizer step and saved on their own (`masks.safetensors`), so the
saved model stays a plain HF checkpoint with zeros in it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MASK = "weight_mask"
STRUCTURED = "structured"  # whole heads and FFN neurons (pruning/structures.py), to a latency target


def _encoder(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    for attr in ("encoder", "transformer"):
        if hasattr(base, attr):
            return getattr(base, attr)
    raise ValueError(f"{type(model).__name__} has no encoder to prune")


def prunable_modules(
    model: nn.Module, include_embeddings: bool = False, include_head: bool = False
) -> dict[str, nn.Module]:
    """Qualified name -> module whose `.weight` is pruned.

    Default (paper guideline 1): the encoder's Linear layers only (attention Q/K/V and output,
    FFN in and out). Embeddings and the task head (and pooler) stay dense unless asked for.
    """
    encoder = _encoder(model)
    encoder_ids = {id(m) for m in encoder.modules()}
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    embedding_ids = {id(m) for m in embeddings.modules()} if embeddings is not None else set()
    base_ids = {id(m) for m in base.modules()}
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module) in encoder_ids:
            out[name] = module
        elif include_embeddings and isinstance(module, nn.Embedding) and id(module) in embedding_ids:
            out[name] = module
        elif include_head and isinstance(module, nn.Linear) and id(module) not in base_ids:
            out[name] = module
    return out


def attach_masks(modules: dict[str, nn.Module]) -> None:
    for module in modules.values():
        if not hasattr(module, MASK):
            module.register_buffer(MASK, torch.ones_like(module.weight, dtype=torch.bool), persistent=False)


@torch.no_grad()
def apply_masks(modules: dict[str, nn.Module]) -> None:
    """Zero the pruned weights (call after every optimizer step)."""
    for module in modules.values():
        module.weight.mul_(getattr(module, MASK))


@torch.no_grad()
def mask_gradients(modules: dict[str, nn.Module]) -> None:
    """Zero the gradients of pruned weights (before clipping, so they do not shrink the step)."""
    for module in modules.values():
        if module.weight.grad is not None:
            module.weight.grad.mul_(getattr(module, MASK))


def get_masks(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": getattr(m, MASK) for name, m in modules.items()}


@torch.no_grad()
def set_masks(modules: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    for name, module in modules.items():
        key = f"{name}.weight"
        if key not in masks:
            raise KeyError(f"no mask for {key}")
        mask = masks[key].to(device=module.weight.device, dtype=torch.bool)
        if mask.shape != module.weight.shape:
            raise ValueError(f"mask {key} has shape {tuple(mask.shape)}, weight {tuple(module.weight.shape)}")
        if hasattr(module, MASK):
            getattr(module, MASK).copy_(mask)
        else:
            module.register_buffer(MASK, mask.clone(), persistent=False)
    apply_masks(modules)


def sparsity_report(masks: dict[str, torch.Tensor]) -> dict:
    """Overall and per-tensor sparsity (fraction of zeros) of a set of masks."""
    per = {k: 1.0 - m.float().mean().item() for k, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((~m.bool()).sum()) for m in masks.values())
    return {"overall": zeros / total if total else 0.0, "zeros": zeros, "total": total, "per_tensor": per}


def save_masks(masks: dict[str, torch.Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.to(torch.uint8).contiguous().cpu() for k, v in masks.items()}, str(path))


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.bool() for k, v in load_file(str(path)).items()}


def check_exact(masks: dict[str, torch.Tensor], target: float, scope: str, group: int = 1) -> None:
    """Raise if the masks do not hold exactly the target sparsity for the scope (with a block
    pattern, in whole groups of `group` weights: round(target * groups) of them)."""
    if scope == "layer":
        for k, m in masks.items():
            want = group * round(target * m.numel() / group)
            got = int((~m.bool()).sum())
            if got != want:
                raise AssertionError(f"{k}: {got} zeros, expected {want} ({target:.4f} per layer)")
    else:
        total = sum(m.numel() for m in masks.values())
        want = group * round(target * total / group)
        got = sum(int((~m.bool()).sum()) for m in masks.values())
        if got != want:
            raise AssertionError(f"global: {got} zeros of {total}, expected {want} ({target:.4f})")


def block_of(pattern: str | None) -> int | None:
    """"blockK" -> K: groups of K consecutive input weights pruned together (oBERT's structured
    variant; block4 is what VNNI's 4-way INT8 dot products consume); None otherwise."""
    if isinstance(pattern, str) and pattern.startswith("block"):
        try:
            k = int(pattern[len("block"):])
        except ValueError:
            raise ValueError(f"pattern 'blockK' needs a whole K (e.g. block4), got '{pattern}'") from None
        if k < 2:
            raise ValueError(f"pattern blockK needs K >= 2, got '{pattern}'")
        return k
    return None


def group_of(pattern: str | None) -> int:
    """The input-dim multiple a pattern needs of every prunable tensor (1: none)."""
    nm, k = parse_pattern(pattern), block_of(pattern)
    return nm[1] if nm else (k or 1)


def check_blocks(masks: dict[str, torch.Tensor], k: int) -> None:
    """Raise unless every group of K consecutive input weights is kept or pruned as a whole."""
    for name, mask in masks.items():
        kept = mask.reshape(-1, k).sum(1)
        bad = int(((kept != 0) & (kept != k)).sum())
        if bad:
            raise AssertionError(f"{name}: {bad} groups of {k} are partly pruned")


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """"unstructured"/None/"blockK" -> None; "N:M" -> (N, M): keep N of every M consecutive input weights."""
    if pattern in (None, "", "unstructured", STRUCTURED) or block_of(pattern):
        return None
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ValueError(
            f"pattern must be 'unstructured', 'structured', N:M (e.g. 2:4) or blockK (e.g. block4), got '{pattern}'"
        ) from None
    if not 0 < n < m:
        raise ValueError(f"pattern N:M needs 0 < N < M, got '{pattern}'")
    return n, m


@torch.no_grad()
def nm_masks(
    scores: dict[str, torch.Tensor], current: dict[str, torch.Tensor], n: int, m: int
) -> dict[str, torch.Tensor]:
    """N:M semi-structured masks: in every group of M consecutive weights along the input
    dimension (the last dim of a Linear weight, what sparse tensor cores group), keep the N
    highest-scoring ones. Already-pruned weights rank lowest, so they stay pruned."""
    out = {}
    for name, sc in scores.items():
        if sc.shape[-1] % m:
            raise ValueError(f"{name}: input dim {sc.shape[-1]} is not a multiple of {m} for an N:M pattern")
        s = sc.detach().float().clone()
        s[~current[name].to(s.device)] = -1.0
        groups = s.reshape(-1, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
        out[name] = keep.view_as(sc)
    return out


def check_pattern(masks: dict[str, torch.Tensor], n: int, m: int) -> None:
    """Raise unless every group of M consecutive input weights keeps exactly N."""
    for k, mask in masks.items():
        kept = mask.reshape(-1, m).sum(1)
        if bool((kept != n).any()):
            bad = int((kept != n).sum())
            raise AssertionError(f"{k}: {bad} groups of {m} do not keep exactly {n}")


@torch.no_grad()
def masks_from_scores(
    scores: dict[str, torch.Tensor],
    current: dict[str, torch.Tensor],
    sparsity: float,
    scope: str,
    pattern: str | None = None,
    group_scores: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights: exactly round(sparsity * n) zeros, globally or per tensor
    (or, with an N:M `pattern`, N of every M consecutive input weights; `sparsity` is then 1 - N/M;
    with a blockK pattern, whole groups of K consecutive input weights, ranked by
    `group_scores` (shape (out, in/K)) or else by the L2 norm of their K scores).

    Already-pruned weights rank first for removal, so masks only ever lose ones while the
    sparsity rises (a pruned weight never comes back).
    """
    nm = parse_pattern(pattern)
    if nm:
        return nm_masks(scores, current, *nm)
    k = block_of(pattern)
    if k:
        groups = group_scores or {
            n: s.detach().float().reshape(*s.shape[:-1], -1, k).norm(dim=-1) for n, s in scores.items()
        }
        kept = {n: current[n].reshape(*current[n].shape[:-1], -1, k).all(-1) for n in scores}
        return {n: m.repeat_interleave(k, dim=-1) for n, m in masks_from_scores(groups, kept, sparsity, scope).items()}

    def ranked(name: str) -> torch.Tensor:
        s = scores[name].detach().float().flatten().clone()
        s[~current[name].flatten().to(s.device)] = -1.0  # scores are >= 0
        return s

    out = {}
    if scope == "layer":
        for name in scores:
            s = ranked(name)
            mask = torch.ones_like(s, dtype=torch.bool)
            mask[torch.argsort(s)[: round(sparsity * s.numel())]] = False
            out[name] = mask.view_as(scores[name])
        return out
    flat = torch.cat([ranked(n).cpu() for n in scores])
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[torch.argsort(flat)[: round(sparsity * flat.numel())]] = False
    offset = 0
    for name, s in scores.items():
        out[name] = mask[offset : offset + s.numel()].view_as(s).to(s.device)
        offset += s.numel()
    return out


FEW = 16  # a layer keeping fewer weights than this is all but removed


def warn_few_kept(modules: dict, sparsity: float) -> str | None:
    """One warning line when the smallest layer would keep fewer than FEW weights at `sparsity`
    (exactly so per layer; on average so with global ranking)."""
    name, mod = min(modules.items(), key=lambda kv: kv[1].weight.numel())
    kept = round((1 - sparsity) * mod.weight.numel())
    if kept >= FEW:
        return None
    msg = f"warning: at sparsity {sparsity:g} layer {name} keeps about {kept} of {mod.weight.numel()} weights"
    from ..progress import warn

    warn(msg)
    return msg
