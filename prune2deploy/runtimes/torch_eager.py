"""PyTorch eager, the reference a user would otherwise keep: CPU fp32 (and CUDA where present)."""

from __future__ import annotations

from functools import partial

import numpy as np

from ..measure.timing import time_calls
from .registry import Runtime


def available(device: str = "cpu") -> bool:
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def version() -> str:
    import torch

    return torch.__version__


def bench(model_dir, inputs, threads, warmup, iters, min_time_s, device: str = "cpu", auto_class: str = "AutoModel"):
    import torch

    from ..model.load import load_model

    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    model = load_model(str(model_dir), auto_class).to(device).eval()
    x = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}

    @torch.inference_mode()
    def run(_inputs) -> list[np.ndarray]:
        out = model(**x)
        if device == "cuda":
            torch.cuda.synchronize()
        return [t.float().cpu().numpy() for t in (out.to_tuple() if hasattr(out, "to_tuple") else out)]

    return time_calls(run, inputs, warmup, iters, min_time_s)


RUNTIMES = [
    Runtime("torch", "fp32", "hf", available, version, partial(bench, device="cpu"), licence="BSD-3-Clause"),
    Runtime(
        "torch-cuda", "fp32", "hf", partial(available, "cuda"), version, partial(bench, device="cuda"), device="cuda",
        licence="BSD-3-Clause",
    ),
]
