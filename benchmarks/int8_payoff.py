"""Dense fp32 vs sparse fp32 vs sparse INT8 (dynamic and static QDQ), side by side, on a finished run dir.

Uses the quantize stage's own functions (ORT dynamic per-channel INT8, static QDQ INT8
calibrated on the stage's 64 dev inputs, zeros verified tensor by tensor, the task's
evaluation through ONNX Runtime) on `RUN/export/model.onnx`, so it works on
a run made without `--quantize`, then times every graph through p2d's bench code on the
runtimes asked for (ONNX Runtime, OpenVINO, DeepSparse) at fixed shapes with real task inputs.
Idle machine please.

    .venv/bin/python benchmarks/int8_payoff.py runs/rotten_tomatoes-gmp-0.8 --out benchmarks/results/int8_payoff_rt80
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from prune2deploy.files import read_json
from prune2deploy.model.load import load_tokenizer
from prune2deploy.recipe import BenchConfig
from prune2deploy.run import load_run_recipe
from prune2deploy.measure.bench_rows import bench_models, markdown, reference_outputs
from prune2deploy.graphs.int8 import (
    OnnxAsModel,
    calibration_batches,
    check_zeros_kept,
    quantize_int8,
    quantize_int8_static,
)
from prune2deploy.tasks.registry import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--runtimes", default="onnxruntime,openvino,openvino-bf16,deepsparse")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="benchmarks/results/int8_payoff")
    ap.add_argument(
        "--qat-epochs", type=float, default=0.0, help="> 0: also QAT (the quantize stage's own) then static QDQ"
    )
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    recipe = load_run_recipe(run_dir)
    task = get_task(recipe.task)
    _, dev, _ = task.load(recipe)
    export_dir = run_dir / "export"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        int8, qdq = Path(tmp) / "model.int8.onnx", Path(tmp) / "model.int8-static.onnx"
        tokenizer = load_tokenizer(str(export_dir))
        quantize_int8(export_dir / "model.onnx", int8)
        cal = calibration_batches(task, tokenizer, dev, recipe.data.max_length)
        quantize_int8_static(export_dir / "model.onnx", qdq, cal)
        per_tensor = read_json(export_dir / "stage.json")["result"]["per_tensor"]
        names = [t["onnx_name"] for t in per_tensor.values() if "[" not in t["onnx_name"]]
        zeros = check_zeros_kept(export_dir / "model.onnx", int8, names)
        zeros_static = check_zeros_kept(export_dir / "model.onnx", qdq, names)
        graphs = [
            ("dense_fp32", export_dir / "dense.onnx"),
            ("sparse_fp32", export_dir / "model.onnx"),
            ("sparse_int8", int8),
            ("sparse_int8_static", qdq),
        ]
        qat_info = None
        if args.qat_epochs > 0:
            from dataclasses import replace

            from prune2deploy.train import qat
            from prune2deploy.model.load import load_model
            from prune2deploy.pruning.masks import load_masks

            r = replace(recipe, export=replace(recipe.export, quantize="int8-static", qat_epochs=args.qat_epochs))
            teacher = load_model(
                read_json(run_dir / "teacher" / "stage.json")["result"]["model_dir"], task.auto_class, task.num_labels
            )
            t0 = time.time()
            qat_info, _ = qat.finetune(
                r,
                task,
                teacher.requires_grad_(False),
                run_dir / "prune" / "model",
                load_masks(run_dir / "prune" / "masks.safetensors"),
                Path(tmp),
            )
            qat_info["seconds"] = round(time.time() - t0, 1)
            qat_q = Path(tmp) / "model.int8-static-qat.onnx"
            quantize_int8_static(Path(tmp) / "model.qat.onnx", qat_q, cal)
            graphs += [("sparse_qat_fp32", Path(tmp) / "model.qat.onnx"), ("sparse_int8_static_qat", qat_q)]
        metrics = {}
        for label, path in graphs:
            m, _ = task.evaluate(
                OnnxAsModel(path, args.threads, task.output_names),
                tokenizer,
                dev,
                recipe.data,
                description=f"eval {label}",
            )
            metrics[label] = m
            print(label, json.dumps(m), flush=True)
        teacher_dir = read_json(run_dir / "teacher" / "stage.json")["result"]["model_dir"]
        models = {
            "dense": {"onnx": export_dir / "dense.onnx", "hf": None, "ref": teacher_dir},
            "sparse": {"onnx": export_dir / "model.onnx", "hf": None, "ref": str(run_dir / "prune" / "model")},
            "sparse-int8": {"onnx": int8, "hf": None, "ref": str(run_dir / "prune" / "model"), "precision": "int8"},
            "sparse-int8-static": {
                "onnx": qdq,
                "hf": None,
                "ref": str(run_dir / "prune" / "model"),
                "precision": "int8",
            },
        }
        if qat_info:
            models["sparse-int8-static-qat"] = {
                "onnx": Path(tmp) / "model.int8-static-qat.onnx",
                "hf": None,
                "ref": str(Path(tmp) / "qat_model"),
                "precision": "int8",
            }
        samples = task.sample_inputs(dev, 64)
        cache: dict = {}

        def inputs_for(b, s):
            if (b, s) not in cache:
                cache[(b, s)] = task.encode(tokenizer, samples, b, s)
            return cache[(b, s)]

        cfg = BenchConfig(
            runtimes=tuple(args.runtimes.split(",")),
            batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
            seq_lens=(args.seq_len,),
            warmup=3,
            iters=20,
            min_time_s=3.0,
        )
        rows, _ = bench_models(
            models,
            inputs_for,
            cfg,
            args.threads,
            task.auto_class,
            lambda label, x: reference_outputs(models[label]["ref"], task.auto_class, x),
        )
    print(markdown(rows))
    result = {
        "run_dir": str(run_dir),
        "task": recipe.task,
        "threads": args.threads,
        "load": os.getloadavg(),
        "zeros": {k: v for k, v in zeros.items() if k != "tensors"},
        "zeros_static": {k: v for k, v in zeros_static.items() if k != "tensors"},
        "metrics": metrics,
        "qat": qat_info,
        "rows": rows,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
