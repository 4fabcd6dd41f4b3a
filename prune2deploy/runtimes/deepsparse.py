"""DeepSparse (Neural Magic, community licence: non-production use) in its own environment.

DeepSparse 1.8.0 (the last release that installs; 1.9.0 is an end-of-life stub) pins
onnx<1.15 and numpy 1.x, so it lives in `.venv-deepsparse` (made by scripts/bootstrap) and
is driven through `deepsparse_worker.py` as a subprocess: a JSON request, npz inputs and
outputs, no pickles. It compiles with fixed batch and sequence length (with dynamic shapes
DeepSparse silently falls back to ONNX Runtime); if its log says the optimized runtime is
disabled, the benchmark fails loudly instead of reporting ORT's numbers as DeepSparse's.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError

NAME = "deepsparse"
PRECISION = "fp32"
FORMAT = "onnx"
FALLBACK_MARKERS = ("Optimized runtime disabled", "Detected dynamic input")
WORKER = Path(__file__).with_name("deepsparse_worker.py")


def python() -> Path | None:
    env = os.environ.get("P2D_DEEPSPARSE_PYTHON")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".venv-deepsparse" / "bin" / "python"


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    py = python()
    if py is None or not py.exists():
        return None
    try:
        res = subprocess.run(
            [str(py), "-c", "import deepsparse; print(deepsparse.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def available() -> bool:
    return _probe() is not None


def version() -> str:
    return _probe() or "not installed"


def graph_input_names(onnx_path: str | Path) -> list[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in init]


def bench(
    onnx_path: str | Path, inputs: dict[str, np.ndarray], threads: int, warmup: int, iters: int, min_time_s: float
) -> tuple[list[float], list[np.ndarray]]:
    """Compile with the inputs' fixed shapes and time it; returns (times in ms, outputs)."""
    py = python()
    if not available():
        raise UserError(f"runtime 'deepsparse' is not installed (expected {py}; run scripts/bootstrap)")
    names = graph_input_names(onnx_path)
    with tempfile.TemporaryDirectory(prefix="p2d-deepsparse-") as tmp:
        model = Path(tmp) / "model.onnx"
        shutil.copy2(onnx_path, model)  # DeepSparse overwrites the file it compiles
        np.savez(Path(tmp) / "inputs.npz", **{str(i): inputs[n] for i, n in enumerate(names)})
        req = {
            "model": str(model),
            "inputs": str(Path(tmp) / "inputs.npz"),
            "threads": threads,
            "warmup": warmup,
            "iters": iters,
            "min_time_s": min_time_s,
            "out": tmp,
        }
        (Path(tmp) / "req.json").write_text(json.dumps(req))
        env = dict(os.environ, NM_DISABLE_ANALYTICS="1", SPARSEZOO_OFFLINE="1")
        res = subprocess.run(
            [str(py), str(WORKER), str(Path(tmp) / "req.json")], capture_output=True, text=True, env=env, timeout=1800
        )
        log = res.stdout + res.stderr
        if any(m in log for m in FALLBACK_MARKERS):
            raise RuntimeError(
                f"DeepSparse fell back to its ONNX Runtime path (log: '{next(ln for ln in log.splitlines() if any(m in ln for m in FALLBACK_MARKERS)).strip()[:200]}'); not timing it"  # noqa: E501 - one message/literal
            )
        if res.returncode != 0:
            tail = [ln for ln in log.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            raise RuntimeError(f"DeepSparse worker failed: {tail[0][:300]}")
        result = json.loads((Path(tmp) / "result.json").read_text())
        with np.load(Path(tmp) / "outputs.npz", allow_pickle=False) as data:
            outputs = [data[str(i)] for i in range(len(data.files))]
    return result["times_ms"], outputs


def _runtime():
    from .registry import EVALUATION_ONLY, Runtime

    return Runtime(
        NAME, PRECISION, FORMAT, available, version, bench, skips_zeros=True,
        install="scripts/bootstrap makes .venv-deepsparse beside the code, or set P2D_DEEPSPARSE_PYTHON",
        licence=EVALUATION_ONLY,
    )


RUNTIME = _runtime()
