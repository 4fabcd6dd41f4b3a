"""report.json from the stage records, and the rich summary table printed at the end."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..files import read_json
from ..pruning.family import member_of_label
from ..stages import STAGES as STAGE_NAMES


def build_report(recipe, run_dir: Path) -> dict:
    records = {s: read_json(run_dir / s / "stage.json") for s in STAGE_NAMES if (run_dir / s / "stage.json").is_file()}
    res = {s: records.get(s, {}).get("result", {}) for s in STAGE_NAMES}
    teacher, prune, validate, export, quantize, bench = (
        res[s] for s in ("teacher", "prune", "validate", "export", "quantize", "bench")
    )
    report = {
        "task": recipe.task,
        "model": recipe.model,
        "method": recipe.prune.method,
        "target_sparsity": recipe.prune.target_sparsity,
        "target_speedup": recipe.prune.target_speedup,
        "structured": structured_summary(prune, export, bench.get("rows", [])) if recipe.prune.target_speedup else None,
        "profile": recipe.profile,
        "seed": recipe.seed,
        "metric": validate.get("metric"),
        "metrics": {"dense": validate.get("dense", {}), "sparse": validate.get("sparse", {}),
                    "members": validate.get("members") or {}},
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
    report["family"] = family_summary(report, prune, recipe.bench.accuracy_gate)
    report["verdict"] = verdict(report, recipe.bench.accuracy_gate)
    return report


def family_summary(report: dict, prune: dict, gate: float) -> list[dict] | None:
    """A --speedup family, smallest target first (the last is the run's main model, label
    "sparse"): each member's widths, accuracy against the gate, and measured speedups per
    production runtime (worst over the bench shapes, against the best dense option)."""
    from ..pruning.family import label
    from ..runtimes.registry import EVALUATION_ONLY, licence_of

    if not prune.get("members"):
        return None
    metric = report.get("metric")
    dense = report["metrics"]["dense"].get(metric) if metric else None
    main = {"name": prune.get("name") or f"{prune.get('target_speedup'):g}x",
            "target_speedup": prune.get("target_speedup"), "widths": prune.get("widths"),
            "latency_loop": (prune.get("latency_loop") or {}).get("final")}
    out = []
    for m in [*prune["members"], main]:
        lab = "sparse" if m is main else label(m["name"])
        acc = (report["metrics"]["sparse"] if m is main else report["metrics"]["members"].get(m["name"], {})).get(
            metric) if metric else None
        measured = {}
        for r in report.get("bench") or []:
            if r.get("model") == lab and "p50_ms" in r and licence_of(r["runtime"]) != EVALUATION_ONLY:
                measured.setdefault(r["runtime"], {})[f"b{r['batch_size']}s{r['seq_len']}"] = r.get(
                    "speedup_vs_best_dense")
        worst = {rt: min(v for v in shapes.values() if v is not None) for rt, shapes in measured.items()
                 if any(v is not None for v in shapes.values())}
        fastest = max(worst, key=worst.get, default=None)
        kept = acc is not None and bool(dense) and acc >= gate * dense  # as the verdict compares, unrounded
        retained = round(acc / dense, 4) if acc is not None and dense else None
        loop = m.get("latency_loop") or {}
        out.append({
            "name": m["name"], "label": lab, "target_speedup": m["target_speedup"], "widths": m.get("widths"),
            "metric": acc, "retained": retained, "keeps_gate": kept,
            "measured_vs_best_dense": measured, "fastest_runtime": fastest,
            "worst_speedup_vs_best_dense": worst.get(fastest) if fastest else None,
            "loop_met": loop.get("met"),
        })
    return out


# graph label -> the accuracy it was measured with (the model's, or its INT8 graph's through ORT)
ACCURACY_OF = {"dense": ("dense",), "sparse": ("sparse",), "sparse-int8": ("quantize", "sparse_int8"),
               "dense-int8": ("quantize", "dense_int8"), "sparse-int8-mmi": ("quantize", "sparse_int8_mmi"),
               "dense-int8-mmi": ("quantize", "dense_int8_mmi")}


def _eval_count(report: dict) -> int | None:
    info = (report.get("data") or {}).get("eval") or {}
    return next((v for k, v in info.items() if k.startswith("eval_") and isinstance(v, int)), None)


def row_accuracy(report: dict, row: dict) -> tuple[float | None, float | None, int | None]:
    """(the task metric of what a bench row runs, the dense fp32 model's on the same examples,
    how many): measured on the row's runtime in its precision where the bench scored it (INT8
    and bf16 rows, on its shared dev subset), else the validate stage's (fp32 models, PyTorch)
    or the quantize stage's (INT8 graphs through ORT), each on the run's whole eval set."""
    metric = report.get("metric")
    dense = (report.get("metrics") or {}).get("dense", {}).get(metric) if metric else None
    if row.get("accuracy") is not None:
        return row["accuracy"], row.get("accuracy_dense", dense), row.get("accuracy_examples")
    member = member_of_label(row.get("model") or "")
    if metric and member:  # a --speedup family's member: the validate stage scored it
        return report["metrics"].get("members", {}).get(member, {}).get(metric), dense, _eval_count(report)
    where = ACCURACY_OF.get(row.get("model"))
    if not metric or not where:
        return None, None, None
    if where[0] == "quantize":
        acc = ((report.get("quantize") or {}).get("metrics") or {}).get(where[1], {}).get(metric)
    else:
        acc = report["metrics"][where[0]].get(metric)
    return acc, dense, _eval_count(report)


def verdict(report: dict, gate: float) -> dict | None:
    """What to ship on this machine: of every artifact (graph x production runtime) timed at every
    bench shape and keeping `gate` of the dense model's accuracy on the same examples, the one
    with the best worst-case speedup over the shapes against the best dense option; with its
    runtime's licence. An evaluation-only runtime (DeepSparse) is never the choice; a faster
    row of one that keeps the gate is mentioned beside it."""
    from ..runtimes.registry import EVALUATION_ONLY, licence_of

    rows = [r for r in report.get("bench") or [] if "p50_ms" in r and r.get("speedup_vs_best_dense")]
    metric = report.get("metric")
    dense_acc = report["metrics"]["dense"].get(metric) if metric else None
    if not rows or not dense_acc:
        return None
    shapes = {(r["batch_size"], r["seq_len"]) for r in rows}
    best, evaluation = None, None
    for key in sorted({(r["runtime"], r["model"]) for r in rows}):
        mine = [r for r in rows if (r["runtime"], r["model"]) == key]
        if {(r["batch_size"], r["seq_len"]) for r in mine} != shapes:
            continue  # not timed at every shape
        acc, dense_same, n = row_accuracy(report, mine[0])
        if acc is None or not dense_same or acc < gate * dense_same:
            continue
        worst = min(r["speedup_vs_best_dense"] for r in mine)
        if licence_of(key[0]) == EVALUATION_ONLY:
            if evaluation is None or worst > evaluation[0]:
                evaluation = (worst, key)
            continue
        if best is None or worst > best[0] or (worst == best[0] and acc / dense_same > best[3] / best[4]):
            best = (worst, key, mine, acc, dense_same, n)  # a tie: the more accurate (a family's wider member)
    missed = [m for m in report.get("family") or [] if not m["keeps_gate"]]
    misses = "" if not missed else "; gate missed by " + ", ".join(  # a family: which targets missed it, by how much
        f"the {m['name']} member ({m['retained']:.2%}, {gate - m['retained']:.2%} under)"
        if m["retained"] is not None else f"the {m['name']} member (not scored)" for m in missed)
    if best is None:
        return {"line": f"ship: nothing timed on a production runtime here keeps {gate:.0%} of dense {metric}"
                + misses, "gate": gate, "shipped": False, "missed_gate": [m["name"] for m in missed]}
    worst, (runtime, model), mine, acc, dense_same, n = best
    mine = sorted(mine, key=lambda r: (r["batch_size"], r["seq_len"]))
    licence = licence_of(runtime) or "unknown"
    speed = " / ".join(f"{r['speedup_vs_best_dense']:.2f}x" for r in mine)
    at = " / ".join(f"b{r['batch_size']}" for r in mine)
    what = _artifact(model, mine[0].get("precision"), _main_name(report))
    on = f" on the same {n} dev examples" if n else ""
    line = (f"ship: {what} on {runtime}, {speed} vs the best dense ({mine[0]['best_dense']}) at {at}; "
            f"{metric} {acc:.2f} ({acc / dense_same:.1%} of dense {dense_same:.2f}{on}, gate {gate:.0%}); "
            f"licence {licence}") + misses
    under = [r for r in mine if r.get("fastest_dense")]  # a faster dense option under the gate: named, no baseline
    if under:
        line += "; faster dense under the gate: " + "; ".join(
            f"b{r['batch_size']} {r['fastest_dense']} ({r['speedup_vs_fastest_dense']:.2f}x against it)" for r in under)
    if evaluation and evaluation[0] > worst:
        line += (f" (faster for evaluation only: {_artifact(evaluation[1][1], None)} on {evaluation[1][0]}, "
                 f"{evaluation[0]:.2f}x; {EVALUATION_ONLY})")
    member = member_of_label(model) or (_main_name(report) if model.startswith("sparse") else None)
    return {"line": line, "runtime": runtime, "model": model, "precision": mine[0].get("precision"),
            "member": member, "missed_gate": [m["name"] for m in missed],
            "speedup_vs_best_dense": {f"b{r['batch_size']}s{r['seq_len']}": r["speedup_vs_best_dense"] for r in mine},
            "speedup_vs_fastest_dense": {f"b{r['batch_size']}s{r['seq_len']}": r.get("speedup_vs_fastest_dense",
                                                                                      r["speedup_vs_best_dense"])
                                         for r in mine},
            "accuracy": acc, "accuracy_dense": dense_same, "accuracy_examples": n,
            "retained": round(acc / dense_same, 4), "gate": gate, "licence": licence, "shipped": True,
            "evaluation_only_faster": ({"runtime": evaluation[1][0], "model": evaluation[1][1],
                                        "worst_speedup_vs_best_dense": evaluation[0]}
                                       if evaluation and evaluation[0] > worst else None)}


def _main_name(report: dict) -> str | None:
    """A family's last member's name (its bench label is "sparse"), or None without a family."""
    fam = report.get("family") or []
    return fam[-1]["name"] if fam else None


def _artifact(model: str, precision: str | None, main: str | None = None) -> str:
    member = member_of_label(model) or (main if model.startswith("sparse") else None)
    base = ("pruned" + (f" {member}" if member else "")) if model.startswith("sparse") else "dense"
    graph = "INT8 MatMulInteger" if model.endswith("-mmi") else "INT8" if "int8" in model else (precision or "fp32")
    return f"{base} {graph}"


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
        "latency_loop": prune.get("latency_loop"),
        "compaction": prune.get("compaction"),
        "widths": prune.get("widths"),
        "full_widths": prune.get("full_widths"),
        "parameters": export.get("parameters"),
        "measured": measured,
    }


def summary_table(report: dict) -> Table:
    """One compact table (fits 100 columns): each pruned graph beside its dense twin on each
    runtime and shape, its speedups and accuracy; the verdict is printed under it."""
    metric = report.get("metric") or "metric"
    target = f"{report['target_speedup']:g}x structured" if report.get("target_speedup") else (
        f"{report['target_sparsity']:g} sparse")
    d = report["metrics"]["dense"].get(metric)
    s = report["metrics"]["sparse"].get(metric)
    acc = f"{metric} dense {d:.2f}, pruned {s:.2f} ({s / d:.1%})" if d and s is not None else ""
    st, enc = report.get("structured"), (report.get("sparsity") or {}).get("encoder")
    onnx_s = (report.get("onnx") or {}).get("encoder_sparsity")
    if st and st.get("widths"):
        w = st["widths"]
        acc += f"; kept heads {w['heads']}, FFN {w['ffn']}"
    elif enc is not None:
        acc += f"; encoder sparsity {enc:.4f}" + (f" (ONNX {onnx_s:.4f})" if onnx_s is not None else "")
    t = Table(title=f"{report['task']} · {report['method']} · {target} · {report['profile']}", caption=acc,
              box=None, pad_edge=False, header_style="bold")
    t.add_column("runtime", no_wrap=True)
    for name, just in (("graph", "left"), ("batch", "right"), ("dense ms", "right"),
                       ("pruned ms", "right"), ("vs own dense", "right"), ("vs best dense", "right"),
                       (metric, "right")):
        t.add_column(name, justify=just)
    rows = [r for r in report.get("bench") or [] if "p50_ms" in r]
    twin = {"sparse": "dense", "sparse-int8": "dense-int8", "sparse-int8-mmi": "dense-int8-mmi"}
    main = _main_name(report)
    for r in rows:
        if member_of_label(r["model"]):  # a --speedup family's member beside the dense model
            twin[r["model"]] = "dense"
        if r["model"] not in twin:
            continue
        dense = next((x for x in rows if x["model"] == twin[r["model"]] and x["runtime"] == r["runtime"]
                      and (x["batch_size"], x["seq_len"]) == (r["batch_size"], r["seq_len"])), None)
        own = f"{dense['p50_ms'] / r['p50_ms']:.2f}x" if dense else "-"
        if r.get("sparse_kernel") is False:
            own += "*"
        best = r.get("speedup_vs_best_dense")
        a = row_accuracy(report, r)[0]
        t.add_row(r["runtime"], _artifact(r["model"], r.get("precision"), main).removeprefix("pruned "),
                  f"{r['batch_size']}x{r['seq_len']}", f"{dense['p50_ms']:.2f}" if dense else "-", f"{r['p50_ms']:.2f}",
                  own, f"{best:.2f}x" if best else "-", f"{a:.2f}" if a is not None else "-")
    return t


def summary_notes(report: dict) -> list[str]:
    """The lines under the table: footnotes, refused rows, what was not benched, the verdict."""
    from ..runtimes.registry import EVALUATION_ONLY, cpu_runtimes, licence_of, not_installed

    notes = []
    rows = report.get("bench") or []
    if any(r.get("sparse_kernel") is False for r in rows):
        notes.append("* no sparse kernel on that runtime: same work as dense, the difference is timing noise")
    per_shape = {}
    for r in rows:
        if r.get("best_dense"):
            per_shape.setdefault(f"b{r['batch_size']}", r["best_dense"])
    if per_shape:
        names = sorted(set(per_shape.values()))
        where = names[0] if len(names) == 1 else "; ".join(f"{k}: {v}" for k, v in per_shape.items())
        int8 = all("int8" in v for v in per_shape.values())
        notes.append(f"best dense option timed here: {where}" + (
            " (dense INT8: faster than any float dense model here)" if int8 else ""))
    under = {}
    for r in rows:
        if r.get("fastest_dense"):
            under.setdefault(f"b{r['batch_size']}", r["fastest_dense"])
    if under:
        notes.append("faster, under the accuracy gate (not the baseline): "
                     + "; ".join(f"{k}: {v}" for k, v in under.items()))
    scored = [r for r in rows if r.get("accuracy_examples")]
    if scored:
        notes.append(f"INT8 and bf16 rows scored on their runtime on {scored[0]['accuracy_examples']} dev examples, "
                     f"against dense fp32 on the same ({scored[0].get('accuracy_dense')}); fp32 rows on the whole "
                     "eval set")
    for r in rows:
        if "error" in r and r["model"].startswith("dense") and "not engaged" not in r["error"]:
            notes.append(f"not timed: {r['runtime']} {r['model']} b{r['batch_size']}: {r['error'][:150]}")
    if any(licence_of(r.get("runtime", "")) == EVALUATION_ONLY for r in rows):
        notes.append(f"deepsparse rows: licence {EVALUATION_ONLY}")
    missing = cpu_runtimes(report.get("bench_skipped") or [])
    if missing:
        notes.append("not benched: " + "; ".join(not_installed(n) for n in missing))
    for line in (_loop_line(report.get("structured")), _compaction_line(report.get("structured")),
                 _family_line(report)):
        if line:
            notes.append(line)
    v = report.get("verdict")
    if v:
        notes.append(v["line"])
    return notes


def _loop_line(st: dict | None) -> str | None:
    """One line: the target, the table's prediction and the latency loop's measurement per shape."""
    final = ((st or {}).get("latency_loop") or {}).get("final")
    if not final or not final.get("measured_speedup"):
        return None
    keys = list(final["measured_speedup"])
    at = " / ".join(k.split("s")[0] for k in keys)
    pred = " / ".join(f"{final['predicted_speedup'][k]:.2f}x" for k in keys)
    meas = " / ".join(f"{final['measured_speedup'][k]:.2f}x" for k in keys)
    verdict = "met" if final.get("met") else "MISSED"
    refs = sorted(set((final.get("reference") or {}).values())) or ["dense"]
    return (f"--speedup {final['target_speedup']:g} {verdict} on {final['runtime']} at {at}: table predicted {pred}, "
            f"measured {meas} (random-weight twin vs {' / '.join(refs)}, interleaved; the bench below times "
            "the trained graphs)")


def _family_line(report: dict) -> str | None:
    """One line: each member of a --speedup family, its widths, accuracy and fastest measured speedup."""
    fam = report.get("family")
    if not fam:
        return None
    metric = report.get("metric") or "metric"

    def one(m):
        w = m.get("widths") or {}
        widths = f"{_compact(w.get('heads'))} heads / {_compact(w.get('ffn'))} FFN" if w else "?"
        acc = f"{metric} {m['metric']:.2f} ({m['retained']:.1%})" if m.get("metric") is not None else f"{metric} -"
        speed = (f"{m['worst_speedup_vs_best_dense']:.2f}x on {m['fastest_runtime']}"
                 if m.get("worst_speedup_vs_best_dense") else "not timed")
        return f"{m['name']}: {widths}, {acc}, {speed}" + ("" if m["keeps_gate"] else " (under the gate)")

    return "family (worst shape vs the best dense): " + " · ".join(one(m) for m in fam)


def _compact(xs) -> str:
    """Per-layer widths, one number where every layer has it."""
    if not xs:
        return "-"
    return str(xs[0]) if len(set(xs)) == 1 else ",".join(map(str, xs))


def _compaction_line(st: dict | None) -> str | None:
    """One line: recovery on the compact model, what a step cost there and the steps it bought."""
    c = (st or {}).get("compaction")
    if not c:
        return None
    cost = (f"a step {c['step_cost_ratio']:.2f}x cheaper ({c['masked_ms_per_ktoken']:.0f} → "
            f"{c['compact_ms_per_ktoken']:.0f} ms per 1,000 tokens, measured)"
            if "step_cost_ratio" in c else "too few steps left to time")
    return (f"recovery on the compact model from step {c['step']}: {cost}, "
            f"{c['remaining_steps']} + {c['extra_steps']} steps at the final widths")


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
    console = Console(width=min(100, Console().width))
    console.print(summary_table(report))
    for line in summary_notes(report):
        console.print(line, highlight=False, markup=False)
