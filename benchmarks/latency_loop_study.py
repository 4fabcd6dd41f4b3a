"""Does `--speedup X` mean X? For finished `p2d run TASK --speedup X` run dirs: the target, the
latency table's prediction for the shipped widths, the latency loop's measurement (random-weight
twin vs dense, interleaved), the bench's figures (the trained graphs, dense vs pruned on every
runtime, the best dense option with dense INT8 included), and a re-timing of the two shipped
graphs on the target runtime, dense and pruned interleaved, repeated (`--rounds`).

    python benchmarks/latency_loop_study.py RUN_DIR [RUN_DIR ...] --out DIR [--rounds 5]

Writes DIR/latency_loop.json and DIR/latency_loop.md (the CPU named). Time it on an idle machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from prune2deploy.files import read_json, write_json_atomic
from prune2deploy.measure.machine import cpu_info, cpu_label


def retime(run: Path, runtime: str, shapes, rounds: int, threads: int) -> dict:
    """The exported dense and pruned graphs of `run`, timed interleaved on `runtime`."""
    from prune2deploy.model.load import load_tokenizer
    from prune2deploy.run import load_run_recipe
    from prune2deploy.runtimes.registry import get_runtime
    from prune2deploy.tasks.registry import get_task

    recipe = load_run_recipe(run)
    task = get_task(recipe.task)
    _, dev, _ = task.load(recipe)
    tokenizer = load_tokenizer(str(run / "export"))
    samples = task.sample_inputs(dev, 64)
    rt = get_runtime(runtime)
    out = {}
    for b, s in shapes:
        x = task.encode(tokenizer, samples, b, s)  # what the bench times (stages/common.inputs_cache)
        d, p = [], []
        for _ in range(rounds):
            for path, into in ((run / "export" / "dense.onnx", d), (run / "export" / "model.onnx", p)):
                t, _ = rt.bench(path, x, threads, 5, 20, 1.0)
                into.append(float(np.median(t)))
        out[f"b{b}s{s}"] = {"dense_ms": round(float(np.median(d)), 4), "pruned_ms": round(float(np.median(p)), 4),
                            "speedup": round(float(np.median(d)) / float(np.median(p)), 4),
                            "rounds": {"dense": [round(v, 4) for v in d], "pruned": [round(v, 4) for v in p]}}
    return out


def study(run: Path, rounds: int, threads: int) -> dict:
    rep = read_json(run / "report.json")
    prune = read_json(run / "prune" / "stage.json")["result"]
    loop = (prune.get("latency_loop") or {}).get("final") or {}
    shapes = [tuple(s) for s in prune["shapes"]]
    runtime = prune["latency_runtime"]
    keys = [f"b{b}s{s}" for b, s in shapes]
    predicted = {k: round(d / m, 4) for k, d, m in zip(keys, prune["dense_ms"], prune["predicted_ms"])}
    bench = {}
    for r in rep.get("bench") or []:
        if r.get("model") == "sparse" and "p50_ms" in r:
            bench.setdefault(r["runtime"], {})[f"b{r['batch_size']}s{r['seq_len']}"] = {
                "vs_own_dense": r.get("speedup_vs_dense_same_runtime"), "vs_best_dense": r.get("speedup_vs_best_dense"),
                "best_dense": r.get("best_dense")}
    timed = retime(run, runtime, shapes, rounds, threads) if rounds else None
    v = rep.get("verdict") or {}
    return {
        "run": str(run), "target": prune["target_speedup"], "runtime": runtime, "widths": prune["widths"],
        "table_predicted": predicted, "loop_measured": loop.get("measured_speedup"), "loop_met": loop.get("met"),
        "loop_rounds": len(loop.get("rounds") or []), "bench_sparse": bench, "retimed": timed,
        "accuracy": {"metric": rep.get("metric"), "dense": rep["metrics"]["dense"].get(rep.get("metric")),
                     "pruned": rep["metrics"]["sparse"].get(rep.get("metric")), "retained": rep.get("retained")},
        "verdict": v.get("line"), "seconds": rep.get("seconds"),
    }


def markdown(rows: list[dict], cpu: str) -> str:
    lines = [f"CPU: {cpu}", "",
             "| run | target | runtime | widths (heads / FFN, layer 0) | shape | table predicted | loop measured "
             "(random weights) | bench vs own dense | bench vs best dense | re-timed, interleaved | retained |",
             "|" + "---|" * 11]
    for r in rows:
        w = r["widths"]
        for k in r["table_predicted"]:
            bench = r["bench_sparse"].get(r["runtime"], {}).get(k, {})
            re = (r["retimed"] or {}).get(k, {})
            f = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
            lines.append(
                f"| {Path(r['run']).name} | {r['target']:g}x | {r['runtime']} | {w['heads'][0]} / {w['ffn'][0]} | {k} "
                f"| {f(r['table_predicted'][k])} | {f((r['loop_measured'] or {}).get(k))} "
                f"| {f(bench.get('vs_own_dense'))} | {f(bench.get('vs_best_dense'))} ({bench.get('best_dense')}) "
                f"| {f(re.get('speedup'))} | {r['accuracy']['retained']:.1%} |")
    lines += [""] + [f"- {Path(r['run']).name}: {r['verdict']}" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved re-timings of the shipped graphs (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    rows = [study(r, a.rounds, a.threads) for r in a.runs]
    cpu = cpu_label(cpu_info())
    a.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out / "latency_loop.json", {"cpu": cpu_info(), "rows": rows})
    (a.out / "latency_loop.md").write_text(markdown(rows, cpu))
    print(markdown(rows, cpu))


if __name__ == "__main__":
    main()
