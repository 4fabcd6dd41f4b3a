"""Stage 5: latency and throughput, dense vs sparse (and their INT8 twins), on every runtime.

Inputs are real tokenized task examples padded/truncated to each (batch, seq_len), the same
for every model and runtime; threads are equal across runtimes. Each row is checked against
PyTorch before it is timed (`latency.bench_models`); the CPU is recorded with the rows.
"""

from __future__ import annotations

from ..files import inside, write_json_atomic
from ..measure.bench_rows import add_speedups, bench_models, chart, loadavg, markdown, reference_outputs
from ..measure.dense_gate import judged_on
from ..measure.machine import cpu_info
from ..model.load import load_tokenizer
from ..graphs.int8 import OnnxAsModel
from ..pruning import family
from ..runtimes import onnxruntime as ort_rt
from ..runtimes.registry import session_of
from .common import StageContext, inputs_cache, setup


NEEDS = ("teacher", "prune", "export", "quantize")
READS = ("task", "data", "bench", "threads")
PARALLEL = False


def run(ctx: StageContext) -> dict:
    import torch

    recipe, out = ctx.recipe, ctx.out
    task, _ = setup(recipe)
    _, dev, _ = task.load(recipe)
    sparse_onnx = ctx.path("export", "path")
    tokenizer = load_tokenizer(str(sparse_onnx.parent))
    threads = recipe.threads or torch.get_num_threads()
    samples = task.sample_inputs(dev, 64)
    dense_dir, sparse_dir = ctx.result("teacher")["model_dir"], str(ctx.path("prune", "model_dir"))
    models = {
        "dense": {"onnx": ctx.path("export", "dense_path"), "hf": dense_dir},
        "sparse": {"onnx": sparse_onnx, "hf": sparse_dir},
    }
    structured = ctx.result("prune").get("pattern") == "structured"  # a smaller dense model: less work anywhere
    q = ctx.result("quantize")
    if q.get("quantize", "none") != "none":  # INT8 rows, each checked against ORT on its own graph
        models["sparse-int8"] = {"onnx": ctx.path("quantize", "path"), "hf": None, "precision": "int8"}
    if q.get("dense_path"):  # the dense model in INT8 (with or without --quantize): a "best dense" candidate
        models["dense-int8"] = {"onnx": ctx.path("quantize", "dense_path"), "hf": None, "precision": "int8"}
    if q.get("quantize", "none") != "none":
        for label, field in (("sparse-int8-mmi", "mmi_path"), ("dense-int8-mmi", "dense_mmi_path")):
            if q.get(field):  # DeepSparse's INT8 layout (static only), timed on every runtime all the same
                models[label] = {"onnx": ctx.path("quantize", field), "hf": None, "precision": "int8"}
    for member in ctx.result("prune").get("members") or []:  # a --speedup family: every member, like the last
        models[family.label(member["name"])] = {
            "onnx": inside(ctx.run_dir, ctx.result("export")["members"][member["name"]]["path"], "export record"),
            "hf": str(inside(ctx.run_dir, member["model_dir"], "prune record member")),
        }
    inputs_for = inputs_cache(task, tokenizer, samples)

    for label, m in models.items():
        m["structured"] = structured and label.startswith("sparse")
    accuracy_dev = judged_on(recipe, dev)
    accuracies: dict = {}

    def accuracy(label, runtime):
        """The task metric of graph `label` on `runtime` (the same dev examples for every row)."""
        session = session_of(runtime)
        if session is None or not models[label].get("onnx"):
            return None
        if (label, runtime) not in accuracies:
            m, _ = task.evaluate(
                OnnxAsModel(models[label]["onnx"], threads, task.output_names, session), tokenizer, accuracy_dev,
                recipe.data, description=f"accuracy {label} on {runtime}",
            )
            accuracies[(label, runtime)] = float(m[task.metric])
        return accuracies[(label, runtime)]

    rows, skipped = bench_models(
        models,
        inputs_for,
        recipe.bench,
        threads,
        task.auto_class,
        lambda label, x: (
            ort_rt.load(models[label]["onnx"], threads)(x)  # an INT8 graph: ORT on that graph
            if models[label].get("precision") == "int8"
            else reference_outputs(models[label]["hf"], task.auto_class, x)
        ),
        accuracy,
    )
    # like for like: every row scored here (INT8 and bf16, each on its runtime) sits beside the
    # dense fp32 model scored on the same dev examples
    if any("accuracy" in r for r in rows):
        dense_here = accuracy("dense", "onnxruntime")
        for r in rows:
            if "accuracy" in r:
                r["accuracy_dense"], r["accuracy_examples"] = round(dense_here, 3), len(accuracy_dev)
        add_speedups(rows, recipe.bench.accuracy_gate)  # the best dense option keeps the gate (measure.dense_gate)
    write_json_atomic(out / "bench.json", rows)
    (out / "bench.md").write_text(markdown(rows))
    chart(
        rows,
        out / "bench.png",
        f"{recipe.task} · {recipe.prune.method} {recipe.prune.target_sparsity:g} · {threads} threads",
    )
    return {"rows": rows, "threads": threads, "skipped_runtimes": skipped, "load": loadavg(), "cpu": cpu_info()}
