"""Latency and throughput of ONNX/PyTorch models on every runtime, at fixed shapes.

Every runtime's outputs are compared with a reference on the same inputs: a row whose outputs
differ beyond the tolerance of its precision is marked failed and not reported as a speed.
Every payoff is given twice: against the dense model in the same runtime and precision, and
against the best dense row of all (its INT8 twin included: what a user would otherwise ship).
Also the markdown table and the chart of a set of rows, and `p2d bench FILE.onnx`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .timing import fixed_inputs, summarize
from ..files import write_json_atomic
from .machine import cpu_info
from ..model.load import load_tokenizer
from ..progress import log, track
from ..runtimes.registry import EVALUATION_ONLY, licence_of, not_installed, resolve, skips_zeros

TOLERANCE = {"fp32": 5e-3, "bf16": 0.5}  # max |logit - torch fp32 logit|
# An INT8 graph is checked against ONNX Runtime on the same graph (its accuracy on the task is
# the quantize stage's, measured through ORT). Runtimes round and requantize INT8 differently
# (measured on a squad model: 0.3-2.4 on logits up to ~5 between ORT, OpenVINO and DeepSparse), so
# the check catches a runtime computing something else (a zero point ignored, a layout misread),
# within a quarter of the largest logit; each row keeps its max_abs_diff to show how close.
INT8_RELATIVE = 0.25


def tolerance(precision: str, ref: list[np.ndarray]) -> float:
    if precision == "int8":
        return round(INT8_RELATIVE * (1.0 + max(float(np.abs(r).max()) for r in ref)), 4)
    return TOLERANCE[precision]



def reference_outputs(model_dir: str, auto_class: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    from ..model.load import load_model

    model = load_model(model_dir, auto_class).eval()
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return [t.float().numpy() for t in out.to_tuple()]



def bench_models(
    models: dict[str, dict], inputs_for, bench_cfg, threads: int, auto_class: str | None, reference, accuracy=None
) -> tuple[list[dict], list[str]]:
    """models: {"dense"|"sparse": {"onnx": path, "hf": dir or None}}; inputs_for(b, s) -> inputs;
    reference(label, inputs) -> outputs to check each runtime against. `accuracy(label, runtime)`
    -> the task metric of that graph on that runtime (None where the runtime cannot say): an
    INT8 row is then judged by it against ONNX Runtime's on the same graph, not by its logits."""
    runtimes, skipped = resolve(bench_cfg.runtimes)
    for name in skipped:
        log(f"[yellow]bench: {not_installed(name)}; skipped[/yellow]")
    shapes = [(b, s) for b in bench_cfg.batch_sizes for s in bench_cfg.seq_lens]
    jobs = [
        (rt, b, s, label)
        for (b, s) in shapes
        for rt in runtimes
        for label in models
        if models[label].get("hf" if rt.format == "hf" else "onnx")
    ]
    refs: dict[tuple, list[np.ndarray]] = {}
    rows = []
    for rt, b, s, label in track(jobs, "bench", total=len(jobs)):
        inputs = inputs_for(b, s)
        if (label, b, s) not in refs:
            refs[(label, b, s)] = reference(label, inputs)
        source = models[label]["hf" if rt.format == "hf" else "onnx"]
        kw = {"auto_class": auto_class} if rt.format == "hf" else {}
        precision = models[label].get("precision", rt.precision)  # an INT8 graph is INT8 on any runtime
        row = {
            "runtime": rt.name,
            "precision": precision,
            "device": rt.device,
            "model": label,
            "batch_size": b,
            "seq_len": s,
            "threads": threads,
            "licence": licence_of(rt.name),  # DeepSparse's says evaluation only wherever its rows go
        }
        if models[label].get("structured"):
            row["structured"] = True
        try:
            times, outputs = rt.bench(
                source, inputs, threads, bench_cfg.warmup, bench_cfg.iters, bench_cfg.min_time_s, **kw
            )
        except RuntimeError as e:
            rows.append({**row, "error": str(e)})
            log(f"[red]bench: {rt.name} {label} b{b} s{s}: {e}[/red]")
            continue
        diff = max(
            float(np.abs(np.asarray(o, dtype=np.float32) - r).max()) for o, r in zip(outputs, refs[(label, b, s)])
        )
        row["max_abs_diff"] = round(diff, 6)
        tol = tolerance(precision, refs[(label, b, s)])
        # INT8 and bf16 rows are scored on their runtime, in their precision (fp32 rows: the model's own)
        acc = accuracy(label, rt.name) if accuracy is not None and precision in ("int8", "bf16") else None
        if acc is not None:  # what the user gets: the task metric of this graph on this runtime
            ref_acc = accuracy(label, "onnxruntime")
            row["accuracy"], row["accuracy_onnxruntime"] = round(acc, 3), round(ref_acc, 3)
            if acc < ref_acc - bench_cfg.accuracy_tolerance:
                n = bench_cfg.accuracy_examples
                rows.append({**row, "error": (
                    f"task metric {acc:.2f} on {rt.name} vs {ref_acc:.2f} on ONNX Runtime (same graph, "
                    f"{f'the first {n}' if n else 'all the'} dev examples): more than "
                    f"{bench_cfg.accuracy_tolerance:g} lower; not timed"
                )})
                continue
        if (precision != "int8" or acc is None) and diff > tol:  # bf16 keeps its logits check too
            against = "ONNX Runtime on the same INT8 graph" if precision == "int8" else "PyTorch"
            error = f"outputs differ from {against} by {diff:.3g} (> {tol:g} for {precision}); not timed"
            rows.append({**row, "error": error})
            continue
        rows.append({**row, **summarize(times, b), "rss_mb": _rss_mb()})
    add_speedups(rows)
    return rows, skipped



NO_SPARSE_KERNEL = " (no sparse kernel: same work as dense, the difference is timing noise)"


def add_speedups(rows: list[dict], gate: float | None = None) -> None:
    """Each timed row's speedups: against the dense model on its runtime, on ONNX Runtime, and
    against the best dense option: the fastest dense row on a production runtime (its INT8 and
    bf16 twins included) that keeps `gate` of the dense accuracy (`measure.dense_gate`; None: any);
    a faster dense row under the gate is named beside it (`fastest_dense`)."""
    from .dense_gate import keeps_gate

    ok = [r for r in rows if "p50_ms" in r]
    for r in ok:
        shape = (r["batch_size"], r["seq_len"])
        dense = [x for x in ok if x["model"] == "dense" and (x["batch_size"], x["seq_len"]) == shape]
        same = next((x for x in dense if x["runtime"] == r["runtime"]), None)
        ort = next((x for x in dense if x["runtime"] == "onnxruntime"), None)
        # what a user could ship without pruning: any dense row on a production runtime, its INT8
        # twin included (an evaluation-only runtime, DeepSparse, is timed and shown, never the baseline)
        any_dense = [x for x in ok if x["model"].startswith("dense") and (x["batch_size"], x["seq_len"]) == shape
                     and licence_of(x["runtime"]) != EVALUATION_ONLY]
        best = min((x for x in any_dense if keeps_gate(x, gate)), key=lambda x: x["p50_ms"], default=None)
        fastest = min(any_dense, key=lambda x: x["p50_ms"], default=None)
        r["speedup_vs_dense_same_runtime"] = round(same["p50_ms"] / r["p50_ms"], 3) if same else None
        r["speedup_vs_dense_onnxruntime"] = round(ort["p50_ms"] / r["p50_ms"], 3) if ort else None
        r["speedup_vs_best_dense"] = round(best["p50_ms"] / r["p50_ms"], 3) if best else None
        r["best_dense"] = f"{best['runtime']} {best['model']} ({best['precision']})" if best else None
        for stale in ("fastest_dense", "speedup_vs_fastest_dense"):  # rows are re-counted once scored
            r.pop(stale, None)
        if fastest is not None and fastest is not best:  # faster, but under the gate: said, not the baseline
            r["fastest_dense"] = (f"{fastest['runtime']} {fastest['model']} ({fastest['precision']}), "
                                  f"{fastest['accuracy'] / fastest['accuracy_dense']:.1%} of dense accuracy")
            r["speedup_vs_fastest_dense"] = round(fastest["p50_ms"] / r["p50_ms"], 3)
        compared = same and same["precision"] == r["precision"]
        if not r["model"].startswith("dense") and not r.get("structured") and compared:
            # against its own dense row at the same precision, the same work unless the runtime skips zeros
            r["sparse_kernel"] = skips_zeros(r["runtime"])



def markdown(rows: list[dict]) -> str:
    lines = [
        "| runtime | precision | model | batch | seq | p50 ms | p90 ms | p99 ms | items/s | vs dense same runtime | vs dense ORT | vs best dense |",  # noqa: E501 - one message/literal
        "|" + "---|" * 12,
    ]
    for r in rows:
        if "p50_ms" not in r:
            lines.append(
                f"| {r['runtime']} | {r['precision']} | {r['model']} | {r['batch_size']} | {r['seq_len']} | failed: {r['error'][:80]} |||||||"  # noqa: E501 - one message/literal
            )
            continue
        f = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        same = f(r["speedup_vs_dense_same_runtime"]) + (NO_SPARSE_KERNEL if r.get("sparse_kernel") is False else "")
        lines.append(
            f"| {r['runtime']} | {r['precision']} | {r['model']} | {r['batch_size']} | {r['seq_len']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput']:.1f} | {same} | {f(r['speedup_vs_dense_onnxruntime'])} | {f(r['speedup_vs_best_dense'])} |"  # noqa: E501 - one message/literal
        )
    return "\n".join(lines) + "\n"



def chart(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if "p50_ms" in r]
    shapes = sorted({(r["batch_size"], r["seq_len"]) for r in ok})
    if not shapes:
        return False
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        sub = [r for r in ok if (r["batch_size"], r["seq_len"]) == shape]
        names = sorted({r["runtime"] for r in sub})
        order = ("dense", "dense-int8", "dense-int8-mmi", "sparse", "sparse-int8", "sparse-int8-mmi")
        labels = [m for m in order if any(r["model"] == m for r in sub)] + sorted(
            {r["model"] for r in sub} - set(order))  # a family's members (sparse@1.5x, ...)
        x = np.arange(len(names))
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            vals = [next((r["p50_ms"] for r in sub if r["runtime"] == n and r["model"] == label), 0) for n in names]
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=label)
        ax.set_xticks(x, names, fontsize=7)
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"batch {shape[0]}, seq {shape[1]}")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True



def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            import os

            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return -1.0



def loadavg() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None



def bench_onnx_files(model: Path, dense: Path | None, bench_cfg, threads: int, out: Path | None) -> list[dict]:
    """`p2d bench MODEL.onnx [--dense DENSE.onnx]`: any ONNX file, outside a run dir.

    Inputs: the tokenizer beside the model when there is one (texts from a fixed sentence),
    else random token ids; the reference outputs are ONNX Runtime's on the same file.
    """
    from ..errors import UserError
    from ..graphs.onnx_sparsity import load_initializers
    from ..runtimes import onnxruntime as ort_rt

    for p in [model] + ([dense] if dense else []):
        if not Path(p).is_file():
            raise UserError(f"ONNX file not found: {p}")
        load_initializers(p)  # a corrupt or non-ONNX file fails here with one line
    models = {"sparse": {"onnx": Path(model), "hf": None}}
    if dense:
        models["dense"] = {"onnx": Path(dense), "hf": None}
    shapes = _input_shapes(model)
    tok_dir = Path(model).parent
    tokenizer = load_tokenizer(str(tok_dir)) if (tok_dir / "tokenizer_config.json").is_file() else None
    sample = [
        (
            "How much faster is a sparse model on a CPU?",
            "Pruning removes most weights of the encoder, and a sparse runtime skips them.",
        )
    ]

    dims = next(iter(shapes.values()))
    choices = (dims[1] if dims[1] > 0 else 2) if len(dims) == 3 else 1  # multiple choice: (batch, choices, seq)

    def inputs_for(b, s):
        n = b * choices
        if tokenizer is not None:
            x = fixed_inputs(tokenizer, sample, n, s)
        else:
            rng = np.random.default_rng(0)
            x = {
                "input_ids": rng.integers(1000, 2000, (n, s)).astype(np.int64),
                "attention_mask": np.ones((n, s), np.int64),
                "token_type_ids": np.zeros((n, s), np.int64),
            }
        return {k: (v.reshape(b, choices, s) if len(dims) == 3 else v) for k, v in x.items() if k in shapes}

    def reference(label, x):
        try:
            return ort_rt.load(models[label]["onnx"], threads)(x)
        except Exception as e:  # noqa: BLE001 - shapes the model cannot take
            raise UserError(
                f"{models[label]['onnx']}: cannot run on inputs of shape {next(iter(x.values())).shape}: {str(e).splitlines()[0][:160]}"  # noqa: E501 - one message/literal
            ) from None

    rows, _ = bench_models(models, inputs_for, bench_cfg, threads, None, reference)
    cpu = cpu_info()
    for r in rows:
        r["cpu"] = cpu["model"]
        r["isa"] = cpu["isa"]
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "bench.json", rows)
        (out / "bench.md").write_text(markdown(rows))
        chart(rows, out / "bench.png", f"{Path(model).name} · {threads} threads")
    return rows



def _input_shapes(onnx_path: Path) -> dict[str, list[int]]:
    """Graph input name -> dims (-1 where dynamic), initializers excluded."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
        for i in m.graph.input
        if i.name not in init
    }
