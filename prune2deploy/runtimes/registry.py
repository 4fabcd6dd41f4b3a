"""Runtimes by name. A runtime is a module with NAME, PRECISION, available(), version(), load()."""

from __future__ import annotations

from ..errors import UserError
from . import onnxruntime

RUNTIMES = {onnxruntime.NAME: onnxruntime}


def runtime_names() -> list[str]:
    return list(RUNTIMES)


def get_runtime(name: str):
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime '{name}' (known: {', '.join(RUNTIMES)})")
    rt = RUNTIMES[name]
    if not rt.available():
        raise UserError(f"runtime '{name}' is not installed")
    return rt
