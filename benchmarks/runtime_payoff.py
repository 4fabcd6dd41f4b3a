"""The deployment payoff of encoder sparsity, per runtime, on random-weight BERT shapes.

For each shape (MiniLM-L6: 6 x 384; BERT-base: 12 x 768) and sparsity (0 = dense, 0.8,
0.9; global magnitude pruning of the encoder Linears, embeddings/head dense), export to ONNX
(opset 14) and time every runtime asked for at fixed shapes through p2d's own bench code.
Idle machine please: the load average is recorded with the results.

With `--int8`, every model also gets the quantize stage's static INT8 graphs, calibrated on
random token ids: per-channel QDQ (`<label>-int8`, the layout OpenVINO and ORT run) and
DeepSparse's per-tensor MatMulInteger layout (`<label>-int8-mmi`); "best dense" then includes
the dense INT8 graphs, as in a run's bench.

    .venv/bin/python benchmarks/runtime_payoff.py --shapes minilm --batch-sizes 1,16 \
        --runtimes onnxruntime,deepsparse,openvino,openvino-bf16,openvino-sparse,torch
    .venv/bin/python benchmarks/runtime_payoff.py --shapes bert-base --int8 \
        --runtimes onnxruntime,deepsparse,openvino --out benchmarks/results/runtime_payoff_int8_bert-base

With `--pattern block4`, the sparse models are pruned in whole groups of 4 consecutive input
weights (group L2 norm, checked), labelled `sparse80-block4` etc.:

    .venv/bin/python benchmarks/runtime_payoff.py --shapes minilm --pattern block4 --int8 \
        --runtimes onnxruntime,deepsparse,openvino --out benchmarks/results/runtime_payoff_int8_block4_minilm
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from prune2deploy.recipe import BenchConfig
from prune2deploy.measure.bench_rows import bench_models, markdown

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def pattern_tag(sparsity: float, pattern: str) -> str:
    """The suffix that tells a structured sparse model apart (its dir and its label)."""
    return "" if sparsity == 0 or pattern == "unstructured" else f"-{pattern}"


def build(shape: str, sparsity: float, out: Path, pattern: str = "unstructured") -> tuple[Path, Path]:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from prune2deploy.model.load import resolve_model
    from prune2deploy.pruning import gmp
    from prune2deploy.pruning import masks as M
    from prune2deploy.graphs.onnx_export import export_onnx
    from prune2deploy.tasks.registry import get_task

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **SHAPES[shape])).eval()
    if sparsity > 0:
        mods = M.prunable_modules(model)
        M.attach_masks(mods)
        gmp.prune_step(mods, sparsity, "global", {"pattern": pattern})
        if M.block_of(pattern):
            M.check_blocks(M.get_masks(mods), M.block_of(pattern))
    hf = out / f"{shape}-{sparsity:g}{pattern_tag(sparsity, pattern)}"
    if (hf / "model.onnx").is_file():  # built before in this --work dir
        return hf / "model.onnx", hf
    model.save_pretrained(hf)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(hf)
    export_onnx(hf, get_task("rotten_tomatoes"), 14, hf / "model.onnx")
    return hf / "model.onnx", hf


def int8_variants(label: str, onnx_path: Path, seq_len: int) -> dict[str, dict]:
    """The static INT8 graphs of one model, calibrated on 8 batches of 8 random token ids."""
    from prune2deploy.graphs.int8 import quantize_int8_static
    from prune2deploy.graphs.int8_matmulinteger import to_matmulinteger

    rng = np.random.default_rng(1)
    batches = []
    for _ in range(8):
        ids = rng.integers(1000, 20000, (8, seq_len)).astype(np.int64)
        batches.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    qdq, pt, mmi = (onnx_path.with_name(f"model.{k}.onnx") for k in ("int8", "int8-pt", "int8-mmi"))
    if not mmi.is_file():
        quantize_int8_static(onnx_path, qdq, batches)
        quantize_int8_static(onnx_path, pt, batches, per_channel=False)
        to_matmulinteger(pt, mmi)
    return {
        f"{label}-int8": {"onnx": qdq, "hf": None, "precision": "int8"},
        f"{label}-int8-mmi": {"onnx": mmi, "hf": None, "precision": "int8"},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="minilm")
    ap.add_argument("--sparsities", default="0.8,0.9")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--runtimes", default="onnxruntime,deepsparse,openvino,openvino-bf16,openvino-sparse,torch")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--int8", action="store_true", help="also each model's static INT8 graphs (QDQ and MatMulInteger)")
    ap.add_argument("--pattern", default="unstructured", help="the sparse models' pattern: unstructured or blockK")
    ap.add_argument("--out", default="benchmarks/results/runtime_payoff")
    ap.add_argument("--work", help="keep the built models here (reused by a later call) instead of a temp dir")
    ap.add_argument("--build-only", action="store_true", help="build (and quantize) the models, time nothing")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.work or tmp
        for shape in args.shapes.split(","):
            models = {}
            for s in [0.0] + [float(x) for x in args.sparsities.split(",")]:
                onnx_path, hf = build(shape, s, Path(tmp), args.pattern)
                label = ("dense" if s == 0 else f"sparse{int(s * 100)}") + pattern_tag(s, args.pattern)
                models[label] = {"onnx": onnx_path, "hf": str(hf)}
                if args.int8:
                    models.update(int8_variants(label, onnx_path, args.seq_len))
            if args.build_only:
                continue
            rng = np.random.default_rng(0)
            cache = {}

            def inputs_for(b, sl):
                if (b, sl) not in cache:
                    ids = rng.integers(1000, 20000, (b, sl)).astype(np.int64)
                    cache[(b, sl)] = {
                        "input_ids": ids,
                        "attention_mask": np.ones_like(ids),
                        "token_type_ids": np.zeros_like(ids),
                    }
                return cache[(b, sl)]

            from prune2deploy.runtimes import onnxruntime as ort_rt

            def reference(label, x):
                return ort_rt.load(models[label]["onnx"], args.threads)(x)

            cfg = BenchConfig(
                runtimes=tuple(args.runtimes.split(",")),
                batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                seq_lens=(args.seq_len,),
                warmup=3,
                iters=args.iters,
                min_time_s=args.min_time,
            )
            rows, skipped = bench_models(
                models, inputs_for, cfg, args.threads, "AutoModelForSequenceClassification", reference
            )
            for r in rows:
                r["shape"] = shape
            all_rows += rows
            print(markdown(rows), flush=True)
    if args.build_only:
        return
    # speedups: the bench code compares "sparse" rows; here every non-dense label is a sparse model
    from prune2deploy.measure.machine import cpu_info

    result = {"threads": args.threads, "pattern": args.pattern, "cpu": cpu_info(),
              "load_before_and_after": os.getloadavg(), "rows": all_rows}
    (out / "rows.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(markdown(all_rows))


if __name__ == "__main__":
    main()
