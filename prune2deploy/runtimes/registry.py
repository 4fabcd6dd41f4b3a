"""Runtimes by name. A runtime file defines one or more `Runtime`s; each gets a line here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError


@dataclass(frozen=True)
class Runtime:
    name: str
    precision: str  # fp32 | bf16 | int8: stated in every bench row
    format: str  # "onnx": takes the ONNX file; "hf": takes the HF model dir (PyTorch)
    available: Callable[[], bool]
    version: Callable[[], str]
    # bench(path, inputs, threads, warmup, iters, min_time_s) -> (times_ms, outputs)
    bench: Callable[..., tuple[list[float], list]]
    device: str = "cpu"
    skips_zeros: bool = False  # has kernels that skip pruned weights; else sparse = dense work there
    install: str = ""  # how to get it where it is missing (said when a bench skips it)
    licence: str = ""  # what a user may do with it; "evaluation only" is said wherever its rows are
    # session(onnx_path, threads) -> run(inputs) -> outputs, at any input shape: the runtime's
    # accuracy on the task (an INT8 row is judged by it); None where the runtime has none
    session: Callable | None = None


EVALUATION_ONLY = "evaluation only (DeepSparse Community License: not for production)"


def licence_of(name: str) -> str:
    rt = _all().get(name)
    return rt.licence if rt else ""


def session_of(name: str):
    rt = _all().get(name)
    return rt.session if rt else None


def skips_zeros(name: str) -> bool:
    """Whether runtime `name` has sparse kernels (unknown names: no)."""
    rt = _all().get(name)
    return bool(rt and rt.skips_zeros)


def not_installed(name: str) -> str:
    """One line for a runtime a bench skipped: what is missing and how to get it."""
    rt = _all().get(name)
    return f"{name}: not installed here" + (f" ({rt.install})" if rt and rt.install else "")


def cpu_runtimes(names: list[str]) -> list[str]:
    """The CPU runtimes among `names` (a GPU runtime missing on a CPU machine is no news)."""
    runtimes = _all()
    return [n for n in names if n in runtimes and runtimes[n].device == "cpu"]


def _all() -> dict[str, Runtime]:
    from . import deepsparse, onnxruntime, openvino, torch_eager

    runtimes = [*onnxruntime.RUNTIMES, deepsparse.RUNTIME, *openvino.RUNTIMES, *torch_eager.RUNTIMES]
    return {r.name: r for r in runtimes}


def runtime_names() -> list[str]:
    return list(_all())


def runtime_format(name: str) -> str:
    """"onnx" or "hf" (what the runtime takes), installed or not."""
    return _all()[name].format


def get_runtime(name: str) -> Runtime:
    runtimes = _all()
    if name not in runtimes:
        raise UserError(f"unknown runtime '{name}' (known: {', '.join(runtimes)})")
    rt = runtimes[name]
    if not rt.available():
        raise UserError(f"runtime '{name}' is not installed here")
    return rt


def resolve(names: tuple[str, ...]) -> tuple[list[Runtime], list[str]]:
    """Runtimes to bench. 'auto' means every available CPU runtime (and GPU ones where a GPU
    is present), skipping the missing with a warning; a runtime asked for by name must exist."""
    runtimes = _all()
    chosen, skipped = [], []
    for name in names:
        if name == "auto":
            for rt in runtimes.values():
                if rt in chosen:
                    continue
                if rt.available():
                    chosen.append(rt)
                else:
                    skipped.append(rt.name)
        else:
            rt = get_runtime(name)
            if rt not in chosen:
                chosen.append(rt)
    return chosen, skipped
