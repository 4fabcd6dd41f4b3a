"""Pruning methods by name: each a small class (one file) with typed `Settings` of its own
(recipe: `prune.options.<name>`) and `prune_step(modules, sparsity)`. A new method is one
file plus one line here."""

from __future__ import annotations

from ..errors import UserError
from . import gmp, obert, ziplm

METHODS = {
    "gmp": gmp.GMP,
    "obert": obert.OBert,
    "ziplm": ziplm.ZipLM,
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[name]


def settings_for(name: str, options: dict, pattern: str | None = None, modules: dict | None = None):
    """The method's typed settings from `prune.options` (unknown keys, wrong types, values out of
    range or not fit for `pattern` or the `modules` to prune refused)."""
    from ..recipe import _build

    cls = get_method(name)
    settings = _build(cls.Settings, dict(options.get(name) or {}), f"prune.options.{name}")
    settings.check(modules, pattern)
    return settings


def describe() -> dict[str, str]:
    return {k: v.about for k, v in METHODS.items()}
