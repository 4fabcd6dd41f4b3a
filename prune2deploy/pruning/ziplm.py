"""ZipLM (Kurtic, Frantar, Alistarh 2023): structured pruning of heads and FFN neurons by the
second-order (OBS) saliency with the layer-input Hessian H = XᵀX of each output projection,
the kept columns updated to absorb what the removed ones did, to a measured latency target
(`structured.py`; `--speedup X --method ziplm`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import UserError
from .structured import StructuredMethod, StructuredPruner


@dataclass(frozen=True)
class Settings:
    """ZipLM's own settings (recipe: `prune.options.ziplm`)."""

    calibration_examples: int = 256  # training features the Hessians come from, at each pruning step
    batch_size: int = 16
    damp: float = 0.01  # of the Hessian's mean diagonal
    # compare modules in one unit: each module's squared output error divided by the variance of
    # the LayerNorm input it is added to (times that LayerNorm's mean squared gain): the error as
    # the next layer sees it. False: the raw squared errors (each module behind its own LayerNorm)
    normalize: bool = True

    def check(self, modules: dict | None = None, pattern: str | None = None) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool) and getattr(self, f.name) <= 0:
                raise UserError(f"prune.options.ziplm.{f.name} must be > 0, got {getattr(self, f.name)}")


class ZipLM(StructuredMethod):
    about = "ZipLM: heads and FFN neurons by OBS saliency with the layer-input Hessian, to a latency target"
    Settings = Settings

    def __init__(self, settings: Settings, scope: str, pattern: str | None, *, structure=None, latency=None,
                 widths: str = "per_layer", hessians=None, timer=None, final_sparsity=None, norms=None,
                 rungs=None, snapshot=None, **resources):
        self.structured = StructuredPruner("obs", structure, latency, widths == "uniform", hessians, settings.damp,
                                           timer=timer, final_sparsity=final_sparsity,
                                           norms=norms if settings.normalize else None, rungs=rungs,
                                           snapshot=snapshot)

    def prune_step(self, modules: dict, sparsity: float) -> None:
        self.structured.prune_step(modules, sparsity)
