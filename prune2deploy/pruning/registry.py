"""Pruning methods by name: each a `prune_step(modules, sparsity, scope, ctx)` function."""

from __future__ import annotations

from ..errors import UserError
from . import gmp, obert

METHODS = {
    "gmp": (gmp.prune_step, "gradual magnitude pruning (GMP*), |w| saliency, cubic schedule"),
    "obert": (obert.prune_step, "Optimal BERT Surgeon: block-diagonal empirical Fisher saliency + OBS weight update"),
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[name][0]


def describe() -> dict[str, str]:
    return {k: v[1] for k, v in METHODS.items()}
