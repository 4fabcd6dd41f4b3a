"""Stage 5: latency and throughput, dense vs sparse, fixed shapes, per runtime.

Inputs are real tokenized task examples padded/truncated to each (batch, seq_len), the same
for dense and sparse; warm-up, then p50/p90/p99 and throughput. (Output parity of ONNX
Runtime against PyTorch is checked by the export stage.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..benchmark import fixed_inputs, measure
from ..files import write_json_atomic
from ..models import load_tokenizer
from ..progress import track
from ..runtimes.registry import get_runtime
from .common import setup


def bench_files(models: dict[str, Path], tokenizer, samples, bench_cfg, threads: int) -> list[dict]:
    rows = []
    shapes = [(b, s) for b in bench_cfg.batch_sizes for s in bench_cfg.seq_lens]
    jobs = [(rt, b, s, label) for rt in bench_cfg.runtimes for (b, s) in shapes for label in models]
    for rt_name, b, s, label in track(jobs, "bench", total=len(jobs)):
        rt = get_runtime(rt_name)
        inputs = fixed_inputs(tokenizer, samples, b, s)
        run = rt.load(models[label], threads, b, s)
        stats = measure(run, inputs, bench_cfg.warmup, bench_cfg.iters, bench_cfg.min_time_s)
        rows.append({"runtime": rt_name, "precision": rt.PRECISION, "model": label, "batch_size": b, "seq_len": s, "threads": threads, **stats})
    base = {(r["runtime"], r["batch_size"], r["seq_len"]): r["p50_ms"] for r in rows if r["model"] == "dense" and r["runtime"] == "onnxruntime"}
    for r in rows:
        ref = base.get(("onnxruntime", r["batch_size"], r["seq_len"]))
        r["speedup_vs_dense_onnxruntime"] = round(ref / r["p50_ms"], 3) if ref else None
    return rows


def run(recipe, out: Path, upstream: dict, run_dir: Path, key: str) -> dict:
    task, _ = setup(recipe)
    _, dev, _ = task.load(recipe)
    export_dir = run_dir / "export"
    tokenizer = load_tokenizer(str(export_dir))
    threads = recipe.threads or torch.get_num_threads()
    samples = task.sample_inputs(dev, 64)
    models = {"dense": export_dir / "dense.onnx", "sparse": export_dir / "model.onnx"}
    rows = bench_files(models, tokenizer, samples, recipe.bench, threads)
    write_json_atomic(out / "bench.json", rows)
    return {"rows": rows, "threads": threads, "load": _loadavg()}


def _loadavg() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
