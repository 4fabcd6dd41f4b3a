"""Where DeepSparse spends its time, layer by layer: why batch-1 payoff stops short of 3x.

Builds the same random-weight models as runtime_payoff.py (dense, 80%, 90%), runs
DeepSparse's own per-layer analysis (`model_debug_analysis`, in `.venv-deepsparse`) at a
fixed shape, and splits the time into the layers whose weights are pruned (the encoder's
Linear MatMuls/Gemms, kernel sparsity > 0 in the sparse models) and everything else
(attention score/context matmuls, softmax, layer norms, GELU, embeddings). Amdahl: the
speedup is capped by the share of time sparsity cannot touch. Idle machine please.

    .venv/bin/python benchmarks/deepsparse_layers.py --shape minilm --batch-size 1
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_payoff import build  # noqa: E402

WORKER = r'''
import json, sys, numpy as np
from deepsparse import model_debug_analysis
req = json.loads(sys.argv[1])
b, s = req["batch"], req["seq"]
rng = np.random.default_rng(0)
ids = rng.integers(1000, 20000, (b, s)).astype(np.int64)
inputs = [ids, np.ones_like(ids), np.zeros_like(ids)][: req["n_inputs"]]
res = model_debug_analysis(req["model"], inputs, batch_size=b, num_cores=req["threads"], num_iterations=req["iters"],
                           num_warmup_iterations=5, input_shapes=[list(a.shape) for a in inputs])
out = []
for layer in res.get("layer_info", []):
    out.append({k: v for k, v in layer.items() if not isinstance(v, (list, dict))})
print(json.dumps({"layers": out, "total_ms": res.get("average_total_time")}))
'''


def kind(name: str) -> str:
    """Classify a DeepSparse layer by its ONNX node name."""
    if re.search(r"/encoder/layer\.\d+/.*/(query|key|value|dense)/(MatMul|Gemm)", name):
        return "encoder Linear (pruned)"
    if re.search(r"/attention/self/MatMul", name):
        return "attention QK^T and AV"
    return "other (embeddings, layer norm, softmax, GELU, adds, head, fused subgraphs)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="minilm")
    ap.add_argument("--sparsities", default="0,0.8,0.9")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--python", default=str(Path(".venv-deepsparse/bin/python").absolute()))
    ap.add_argument("--out", default="benchmarks/results/deepsparse_layers.json")
    ap.add_argument("--dump-layer", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in (float(x) for x in args.sparsities.split(",")):
            onnx_path, _ = build(args.shape, s, Path(tmp))
            req = {
                "model": str(onnx_path),
                "batch": args.batch_size,
                "seq": args.seq_len,
                "threads": args.threads,
                "iters": args.iters,
                "n_inputs": 3,
            }
            res = subprocess.run([args.python, "-c", WORKER, json.dumps(req)], capture_output=True, text=True, cwd=tmp)
            if res.returncode != 0:
                raise SystemExit(f"deepsparse analysis failed: {res.stderr[-2000:]}")
            data = json.loads(res.stdout.strip().splitlines()[-1])
            layers = data["layers"]
            total = sum(float(x["average_run_time_in_ms"] or 0) for x in layers)
            by_kind: dict[str, float] = {}
            for x in layers:
                k = kind(x.get("canonical_name") or x["name"])
                by_kind[k] = by_kind.get(k, 0.0) + float(x["average_run_time_in_ms"] or 0)
            weight_ms = by_kind.get("encoder Linear (pruned)", 0.0)
            row = {
                "shape": args.shape,
                "sparsity": s,
                "batch": args.batch_size,
                "seq": args.seq_len,
                "layers": len(layers),
                "sum_layer_ms": round(total, 3),
                "reported_total_ms": data.get("total_ms"),
                "weight_layers_ms": round(weight_ms, 3),
                "other_ms": round(total - weight_ms, 3),
                "by_kind_ms": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda t: -t[1])},
            }
            if args.dump_layer:
                print(json.dumps(layers[:3], indent=1))
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
