"""Gradual magnitude pruning (GMP*, Kurtic & Alistarh 2022): the saliency of a weight is |w|."""

from __future__ import annotations

from . import masks as M


def prune_step(modules, sparsity: float, scope: str, ctx=None) -> None:
    """Raise the masks of `modules` to `sparsity` by removing the smallest-magnitude weights."""
    scores = {f"{n}.weight": m.weight.detach().abs() for n, m in modules.items()}
    new = M.masks_from_scores(scores, M.get_masks(modules), sparsity, scope, (ctx or {}).get("pattern"))
    M.set_masks(modules, new)
