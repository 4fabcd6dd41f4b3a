"""What `p2d bench` does with its arguments (the CLI holds no logic)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError


def bench_path(path: Path, dense, runtime, batch_sizes, seq_lens, threads, out, force) -> None:
    import torch

    from ..recipe import BenchConfig, _coerce
    from ..report.summary import build_report, print_bench
    from ..files import write_json_atomic

    over = {}
    if runtime:
        over["runtimes"] = _coerce(tuple[str, ...], runtime, "--runtime")
    if batch_sizes:
        over["batch_sizes"] = _coerce(tuple[int, ...], batch_sizes, "--batch-sizes")
    if seq_lens:
        over["seq_lens"] = _coerce(tuple[int, ...], seq_lens, "--seq-lens")
    n_threads = _coerce(int, threads, "--threads") if threads else 0
    if any(min(v) <= 0 for k, v in over.items() if k != "runtimes"):
        raise UserError("--batch-sizes and --seq-lens must be positive")
    path = Path(path)
    if path.is_dir():
        from ..run import load_run_recipe, run_stage

        recipe = load_run_recipe(path)
        recipe = dataclasses.replace(
            recipe, bench=dataclasses.replace(recipe.bench, **over), threads=n_threads or recipe.threads
        )
        rec = run_stage("bench", recipe, path, force=force)
        write_json_atomic(path / "report.json", build_report(recipe, path))
        print_bench(rec["result"]["rows"])
        return
    if path.suffix != ".onnx" and not path.is_file():
        raise UserError(f"{path}: neither a run dir nor an ONNX file")
    from .bench_rows import bench_onnx_files

    cfg = dataclasses.replace(BenchConfig(runtimes=("onnxruntime",)), **over)
    rows = bench_onnx_files(path, dense, cfg, n_threads or torch.get_num_threads(), out)
    print_bench(rows)
