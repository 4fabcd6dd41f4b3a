"""ZipLM (Kurtic, Frantar, Alistarh 2023): structured pruning of heads and FFN neurons by the
second-order (OBS) saliency with the layer-input Hessian H = XᵀX of each output projection,
the kept columns updated to absorb what the removed ones did, to a measured latency target
(`structured.py`; `--speedup X --method ziplm`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import UserError
from .structured import StructuredPruner


@dataclass(frozen=True)
class Settings:
    """ZipLM's own settings (recipe: `prune.options.ziplm`)."""

    calibration_examples: int = 256  # training features the Hessians come from, at each pruning step
    batch_size: int = 16
    damp: float = 0.01  # of the Hessian's mean diagonal

    def check(self, modules: dict | None = None, pattern: str | None = None) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise UserError(f"prune.options.ziplm.{f.name} must be > 0, got {getattr(self, f.name)}")


class ZipLM:
    about = "ZipLM: heads and FFN neurons by OBS saliency with the layer-input Hessian, to a latency target"
    Settings = Settings

    def __init__(self, settings: Settings, scope: str, pattern: str | None, *, structure=None, latency=None,
                 widths: str = "per_layer", hessians=None, timer=None, final_sparsity=None, **resources):
        self.structured = StructuredPruner("obs", structure, latency, widths == "uniform", hessians, settings.damp,
                                           timer=timer, final_sparsity=final_sparsity)

    @property
    def history(self) -> list[dict]:
        return self.structured.history

    def prune_step(self, modules: dict, sparsity: float) -> None:
        self.structured.prune_step(modules, sparsity)
