"""report.json from the stage records, and the rich summary table printed at the end."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .files import read_json
from .stages import STAGES as STAGE_NAMES


def build_report(recipe, run_dir: Path) -> dict:
    records = {s: read_json(run_dir / s / "stage.json") for s in STAGE_NAMES if (run_dir / s / "stage.json").is_file()}
    res = {s: records.get(s, {}).get("result", {}) for s in STAGE_NAMES}
    teacher, prune, validate, export, quantize, bench = (
        res[s] for s in ("teacher", "prune", "validate", "export", "quantize", "bench")
    )
    return {
        "task": recipe.task,
        "model": recipe.model,
        "method": recipe.prune.method,
        "target_sparsity": recipe.prune.target_sparsity,
        "target_speedup": recipe.prune.target_speedup,
        "structured": structured_summary(prune, export, bench.get("rows", [])) if recipe.prune.target_speedup else None,
        "profile": recipe.profile,
        "seed": recipe.seed,
        "metric": validate.get("metric"),
        "metrics": {"dense": validate.get("dense", {}), "sparse": validate.get("sparse", {})},
        "retained": validate.get("retained"),
        "data": {"train": prune.get("data") or teacher.get("data"), "eval": validate.get("data")},
        "sparsity": {
            "encoder": prune.get("sparsity", {}).get("encoder"),
            "scope": prune.get("scope"),
            "per_layer": prune.get("sparsity", {}).get("per_layer", {}),
        },
        "schedule": {k: prune.get(k) for k in ("epochs", "epoch_scale", "total_steps", "prune_steps")},
        "onnx": {k: export.get(k) for k in ("path", "dense_path", "opset", "encoder_sparsity", "max_abs_diff", "atol")},
        "quantize": quantize if quantize.get("quantize", "none") != "none" else None,
        "bench": bench.get("rows", []),
        "bench_threads": bench.get("threads"),
        "bench_load": bench.get("load"),
        "bench_cpu": bench.get("cpu"),
        "bench_skipped": bench.get("skipped_runtimes", []),
        "teacher": {
            "model_dir": teacher.get("model_dir"),
            "cached": teacher.get("cached"),
            "trained": teacher.get("trained"),
        },
        "seconds": {s: r.get("seconds") for s, r in records.items()},
    }


def structured_summary(prune: dict, export: dict, rows: list[dict]) -> dict:
    """A structured run: the widths kept, the target against the table's prediction, and the
    speedup measured on every runtime (against its own dense row and the best dense of all)."""
    measured = {}
    for r in rows:
        if r.get("model") == "sparse" and "p50_ms" in r:
            measured.setdefault(r["runtime"], {})[f"b{r['batch_size']}s{r['seq_len']}"] = {
                "vs_dense_same_runtime": r.get("speedup_vs_dense_same_runtime"),
                "vs_best_dense": r.get("speedup_vs_best_dense"),
            }
    return {
        "target_speedup": prune.get("target_speedup"),
        "latency_runtime": prune.get("latency_runtime"),
        "predicted_speedup": prune.get("predicted_speedup"),
        "widths": prune.get("widths"),
        "full_widths": prune.get("full_widths"),
        "parameters": export.get("parameters"),
        "measured": measured,
    }


def summary_table(report: dict) -> Table:
    metric = report.get("metric") or "metric"
    t = Table(
        title=f"{report['task']} · {report['method']} · target {report['target_sparsity']:g} · {report['profile']}"
    )
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("sparse", justify="right")
    t.add_column("ratio", justify="right")
    d = report["metrics"]["dense"].get(metric)
    s = report["metrics"]["sparse"].get(metric)
    if d is not None and s is not None:
        t.add_row(metric, f"{d:.2f}", f"{s:.2f}", f"{s / d:.1%}" if d else "-")
    if "exact_match" in report["metrics"]["dense"]:
        t.add_row(
            "exact_match",
            f"{report['metrics']['dense']['exact_match']:.2f}",
            f"{report['metrics']['sparse']['exact_match']:.2f}",
            "",
        )
    q = report.get("quantize") or {}
    qm = (q.get("metrics") or {}).get("sparse_int8", {}).get(metric)
    if qm is not None and d:
        t.add_row(f"{metric} sparse INT8 (ONNX Runtime)", "", f"{qm:.2f}", f"{qm / d:.1%}")
    dq = (q.get("metrics") or {}).get("dense_int8", {}).get(metric)
    if dq is not None and d:
        t.add_row(f"{metric} dense INT8 (ONNX Runtime)", f"{dq:.2f}", "", f"{dq / d:.1%}")
    enc = report["sparsity"].get("encoder")
    onnx_s = report["onnx"].get("encoder_sparsity")
    if enc is not None:
        t.add_row(
            "encoder sparsity (torch / onnx)",
            "0",
            f"{enc:.4f} / {onnx_s:.4f}" if onnx_s is not None else f"{enc:.4f}",
            "",
        )
    rows = [r for r in report.get("bench") or [] if "p50_ms" in r]
    for r in rows:
        if r["model"].startswith("dense"):
            continue
        dense = next(
            (
                x
                for x in rows
                if x["model"] == "dense"
                and x["runtime"] == r["runtime"]
                and x["batch_size"] == r["batch_size"]
                and x["seq_len"] == r["seq_len"]
            ),
            None,
        )
        if dense:
            sp = r.get("speedup_vs_best_dense")
            best = (f" (vs best dense, {r['best_dense']}: {sp:.2f}x{', SLOWER' if sp < 1 else ''})") if sp else ""
            if r.get("sparse_kernel") is False:
                from .latency import NO_SPARSE_KERNEL  # (numpy and the runtimes: only where there are rows)

                best = NO_SPARSE_KERNEL + best
            t.add_row(
                f"p50 ms {r['runtime']} {r['model']} {r.get('precision', '')} b{r['batch_size']} s{r['seq_len']}",
                f"{dense['p50_ms']:.2f}",
                f"{r['p50_ms']:.2f}",
                f"{dense['p50_ms'] / r['p50_ms']:.2f}x{best}",
            )
    from .runtimes.registry import cpu_runtimes, not_installed

    missing = cpu_runtimes(report.get("bench_skipped") or [])
    if missing:
        t.add_row("not benched", "", "", "; ".join(not_installed(n) for n in missing))
    return t


# The bench table's columns, one table for the terminal (`print_bench`) and the HTML page:
# (header, the bench row's key, its format in the terminal)
BENCH_COLUMNS = (
    ("runtime", "runtime", "{}"),
    ("precision", "precision", "{}"),
    ("model", "model", "{}"),
    ("batch", "batch_size", "{}"),
    ("seq", "seq_len", "{}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("items/s", "throughput", "{:.1f}"),
    ("vs dense same rt", "speedup_vs_dense_same_runtime", "{:.2f}x"),
    ("vs dense ORT", "speedup_vs_dense_onnxruntime", "{:.2f}x"),
    ("vs best dense", "speedup_vs_best_dense", "{:.2f}x"),
)


def print_bench(rows: list[dict]) -> None:
    t = Table(title="bench (p50 ms; speedups of sparse rows)")
    for header, _, _ in BENCH_COLUMNS:
        t.add_column(header)
    for r in rows:
        cells = ["-" if r.get(key) is None else fmt.format(r[key]) for _, key, fmt in BENCH_COLUMNS]
        if "p50_ms" not in r:  # a row that could not run: its error where the timings go
            cells = cells[:5] + [f"[red]{r['error'][:60]}[/red]"] + [""] * (len(cells) - 6)
        t.add_row(*cells)
    Console().print(t)


def print_summary(report: dict) -> None:
    Console().print(summary_table(report))
