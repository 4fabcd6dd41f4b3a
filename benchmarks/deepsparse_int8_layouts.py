"""Which static QDQ layout engages DeepSparse's INT8 kernels? A run dir's sparse graph quantized
by ORT's quantize_static (QDQ, weight MatMuls) four ways: per-channel vs per-tensor weights,
uint8 vs int8 activations; each timed on DeepSparse (b1, seq 128) next to the fp32 sparse graph.

    .venv/bin/python benchmarks/deepsparse_int8_layouts.py runs/rotten_tomatoes-obert-0.8 \
        > benchmarks/results/deepsparse_int8_layouts.json
"""
import sys, json, numpy as np
from pathlib import Path
from onnxruntime.quantization import quantize_static, QuantType, QuantFormat, CalibrationDataReader, CalibrationMethod
import onnx
from prune2deploy.run import load_run_recipe
from prune2deploy.tasks.registry import get_task
from prune2deploy.model.load import load_tokenizer
from prune2deploy.runtimes.registry import get_runtime
run = Path(sys.argv[1])
recipe = load_run_recipe(run); task = get_task(recipe.task)
_, dev, _ = task.load(recipe)
tok = load_tokenizer(str(run / "export"))
samples = task.sample_inputs(dev, 64)
src = run / "export" / "model.onnx"
g = onnx.load(str(src), load_external_data=False).graph
w = {i.name for i in g.initializer}
nodes = [n.name for n in g.node if n.op_type == "MatMul" and any(i in w for i in n.input)]
x = task.encode(tok, samples, 1, 128)
ds = get_runtime("deepsparse")
res = {}
t, _ = ds.bench(str(src), x, 2, 3, 20, 2.0); res["fp32 sparse"] = float(np.median(t))
for per_channel in (True, False):
    for act in ("QUInt8", "QInt8"):
        class R(CalibrationDataReader):
            def __init__(s): s.it = iter([task.encode(tok, samples[i:i+8], 8, 128) for i in range(0, 64, 8)])
            def get_next(s): return next(s.it, None)
        dst = f"/tmp/ds_{per_channel}_{act}.onnx"
        quantize_static(
            str(src),
            dst,
            R(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            activation_type=getattr(QuantType, act),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": act == "QInt8"},
        )
        try:
            t, _ = ds.bench(dst, x, 2, 3, 20, 2.0)
            res[f"int8 per_channel={per_channel} act={act}"] = float(np.median(t))
        except Exception as e:
            res[f"int8 per_channel={per_channel} act={act}"] = f"fail {str(e)[:100]}"
        print(res, file=sys.stderr, flush=True)
print(json.dumps({"run_dir": str(run), "p50_ms_b1_s128": res}, indent=1))
