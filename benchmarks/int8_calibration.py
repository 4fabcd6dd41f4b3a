"""How the activation ranges of the static INT8 graph are calibrated, and what each choice costs
in accuracy: on a finished run dir, the shipped per-tensor MatMulInteger graph (DeepSparse's
layout, `p2d package --int8`) is made from `RUN/export/model.onnx` (and `dense.onnx` with
`--dense`) once per calibration, and scored by the task's own evaluation through ONNX Runtime on
the run's dev data. Calibration inputs come from the run's train split (`--from train`) or its
dev split (`dev`: what the quantize stage used before; 64 of the scored questions).

    .venv/bin/python benchmarks/int8_calibration.py runs/squad-gmp-0.9 \
        --calibrations minmax:64:dev,minmax:64:train,percentile-99.99:64:train \
        --out benchmarks/results/int8_calibration_squad_gmp90
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from prune2deploy.graphs.int8 import (
    OnnxAsModel,
    calibration_batches,
    calibration_count,
    check_zeros_kept,
    quantize_int8_static,
)
from prune2deploy.graphs.int8_matmulinteger import to_matmulinteger
from prune2deploy.measure.machine import cpu_info
from prune2deploy.files import read_json
from prune2deploy.model.load import load_tokenizer
from prune2deploy.run import load_run_recipe
from prune2deploy.tasks.registry import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--calibrations", default="minmax:64:dev,minmax:64:train,percentile-99.99:64:train")
    ap.add_argument("--dense", action="store_true", help="also the dense graph, each calibration")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="benchmarks/results/int8_calibration")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    recipe = load_run_recipe(run_dir)
    task = get_task(recipe.task)
    train, dev, _ = task.load(recipe)
    export_dir = run_dir / "export"
    tokenizer = load_tokenizer(str(export_dir))
    per_tensor = read_json(export_dir / "stage.json")["result"]["per_tensor"]
    names = [t["onnx_name"] for t in per_tensor.values() if "[" not in t["onnx_name"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    graphs = [("sparse", export_dir / "model.onnx")] + ([("dense", export_dir / "dense.onnx")] if args.dense else [])
    for spec in args.calibrations.split(","):
        method, asked, split = spec.split(":")
        n = calibration_count(method, int(asked))  # a percentile on more inputs runs out of memory
        batches = calibration_batches(task, tokenizer, train if split == "train" else dev, recipe.data.max_length, n=n)
        for label, src in graphs:
            with tempfile.TemporaryDirectory() as tmp:
                qdq, mmi = Path(tmp) / "pt.onnx", Path(tmp) / "mmi.onnx"
                t0 = time.time()
                quantize_int8_static(src, qdq, batches, per_channel=False, calibration=method)
                to_matmulinteger(qdq, mmi)
                if label == "sparse":
                    check_zeros_kept(src, mmi, names)
                m, _ = task.evaluate(
                    OnnxAsModel(mmi, args.threads, task.output_names), tokenizer, dev, recipe.data,
                    description=f"{label} {spec}",
                )
            row = {"graph": label, "calibration": method, "examples": n, "from": split,
                   task.metric: m[task.metric], "metrics": m, "seconds": round(time.time() - t0, 1)}
            print(json.dumps({k: v for k, v in row.items() if k != "metrics"}), flush=True)
            rows.append(row)
    fp32 = read_json(run_dir / "report.json")["metrics"]  # the PyTorch models on the same dev data
    (out / "calibration.json").write_text(
        json.dumps({"run": str(run_dir), "cpu": cpu_info(), "fp32": fp32, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
