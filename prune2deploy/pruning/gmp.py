"""Gradual magnitude pruning (GMP*, Kurtic & Alistarh 2022): the saliency of a weight is |w|."""

from __future__ import annotations

from dataclasses import dataclass

from . import masks as M
from .structured import StructuredMethod


def prune_step(modules, sparsity: float, scope: str, ctx=None) -> None:
    """Raise the masks of `modules` to `sparsity` by removing the smallest-magnitude weights."""
    scores = {f"{n}.weight": m.weight.detach().abs() for n, m in modules.items()}
    new = M.masks_from_scores(scores, M.get_masks(modules), sparsity, scope, (ctx or {}).get("pattern"))
    M.set_masks(modules, new)


@dataclass(frozen=True)
class Settings:
    """GMP has no settings of its own (the schedule is the recipe's)."""

    def check(self, modules: dict | None = None, pattern: str | None = None) -> None:
        pass


class GMP(StructuredMethod):
    about = "gradual magnitude pruning (GMP*), |w| saliency, cubic schedule; with --speedup: heads/FFN neurons by norm"
    Settings = Settings

    def __init__(self, settings: Settings, scope: str, pattern: str | None, *, structure=None, latency=None,
                 widths: str = "per_layer", timer=None, final_sparsity=None, rungs=None, snapshot=None,
                 **resources):
        self.scope, self.pattern = scope, pattern
        self.structured = None
        if pattern == M.STRUCTURED:
            from .structured import StructuredPruner

            self.structured = StructuredPruner("magnitude", structure, latency, widths == "uniform", timer=timer,
                                               final_sparsity=final_sparsity, rungs=rungs, snapshot=snapshot)

    def prune_step(self, modules: dict, sparsity: float) -> None:
        if self.structured is not None:
            return self.structured.prune_step(modules, sparsity)
        prune_step(modules, sparsity, self.scope, {"pattern": self.pattern})
