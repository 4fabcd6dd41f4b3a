"""`p2d sweep` on the local engine and on Ray (a local cluster started by the sweep), the same
points: the metrics per point (identical where the thread count is the same) and the wall times.

    python benchmarks/sweep_engines.py --out DIR [--task rotten_tomatoes] [--profile smoke]
        [--sparsity 0.5,0.7,0.8,0.9]

Four sweeps, one after another, each in a fresh root (its teacher trained anew):
  local-1t   --engine local, threads=1 (one point at a time, one core)
  ray-1cpu   --engine ray --cpus-per-point 1, threads=1 (a point per core: two at a time on 2 cores)
  local      --engine local, all cores
  ray-2cpu   --engine ray --cpus-per-point 2 (one point at a time, all cores): minus `local`,
             the Ray overhead (cluster start, a worker per point, the teacher task) over the points
Writes DIR/sweep_engines.json and DIR/sweep_engines.md (the CPU named). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prune2deploy.measure.machine import cpu_label

CONFIGS = {
    "local-1t": ["--set", "threads=1"],
    "ray-1cpu": ["--set", "threads=1", "--engine", "ray", "--cpus-per-point", "1"],
    "local": [],
    "ray-2cpu": ["--engine", "ray", "--cpus-per-point", "2"],
}


def sweep(name: str, args, work: Path) -> dict:
    root = work / name
    cmd = [sys.executable, "-m", "prune2deploy.cli", "sweep", args.task, "--profile", args.profile,
           "--sparsity", args.sparsity, "--root", str(root), *CONFIGS[name]]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    started = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - started
    (work / f"{name}.log").write_text(res.stdout + res.stderr)
    if res.returncode:
        raise SystemExit(f"{name}: exit {res.returncode}; see {work / name}.log")
    summary = json.loads((root / f"sweep-{args.task}-{args.profile}.json").read_text())
    return {"wall_s": round(wall, 1), "command": " ".join(cmd[3:]), "points": summary["points"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("runs/sweep_engines"))
    ap.add_argument("--task", default="rotten_tomatoes")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--sparsity", default="0.5,0.7,0.8,0.9")
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--report-only", action="store_true", help="Rewrite the .md from the .json and --work.")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((args.out / "sweep_engines.json").read_text())
    else:
        results = {"cpu": cpu_label(), "task": args.task, "profile": args.profile, "sweeps": {}}
        for name in args.only.split(","):
            print(f"{name} ...", flush=True)
            results["sweeps"][name] = sweep(name, args, args.work)
            print(f"{name}: {results['sweeps'][name]['wall_s']} s", flush=True)
            (args.out / "sweep_engines.json").write_text(json.dumps(results, indent=2))
    results["same_outputs"] = {f"{b} vs {a}": same_outputs(args.work, a, b, results)
                               for a, b in PAIRS if {a, b} <= set(results["sweeps"])}
    (args.out / "sweep_engines.json").write_text(json.dumps(results, indent=2))
    write_md(results, args.out / "sweep_engines.md")


PAIRS = (("local-1t", "ray-1cpu"), ("local", "ray-2cpu"))
COMPARED = ("prune", "validate", "export")  # masks and weights, predictions, ONNX graphs


def same_outputs(work: Path, a: str, b: str, results: dict) -> bool:
    """Every point's prune, validate and export outputs hash the same in both sweeps."""
    for p in results["sweeps"][a]["points"]:
        name = Path(p["run_dir"]).name
        for stage in COMPARED:
            x, y = (json.loads((work / s / name / stage / "stage.json").read_text())["outputs"] for s in (a, b))
            if x != y:
                return False
    return True


def write_md(results: dict, path: Path) -> None:
    s = results["sweeps"]
    lines = [f"CPU: {results['cpu']}", "",
             f"`p2d sweep {results['task']} --profile {results['profile']}`, {len(next(iter(s.values()))['points'])} "
             "points, each sweep in a fresh root (its own teacher), one sweep at a time.", "",
             "| sweep | wall | per point (inside the worker) | " + " | ".join(
                 f"{p['sparsity']:g}: dense / pruned" for p in next(iter(s.values()))["points"]) + " |",
             "|---|---|---|" + "---|" * len(next(iter(s.values()))["points"])]
    for name, r in s.items():
        per = ", ".join(f"{p.get('seconds', 0):g}" for p in r["points"])
        cells = " | ".join(f"{p['dense']:.2f} / {p['sparse']:.2f}" for p in r["points"])
        lines.append(f"| {name} | {r['wall_s']:g} s | {per} s | {cells} |")
    for a, b in PAIRS:
        if a in s and b in s:
            same = all((p["dense"], p["sparse"]) == (q["dense"], q["sparse"])
                       for p, q in zip(s[a]["points"], s[b]["points"]))
            bits = results.get("same_outputs", {}).get(f"{b} vs {a}")
            n = len(s[a]["points"])
            lines.append(f"- {b} vs {a}: metrics {'identical at every point' if same else 'DIFFER'}"
                         + ("" if bits is None else f", {'/'.join(COMPARED)} outputs "
                            + ("byte for byte the same" if bits else "NOT the same bytes"))
                         + "; wall "
                         f"{s[b]['wall_s']:g} s vs {s[a]['wall_s']:g} s ({s[a]['wall_s'] / s[b]['wall_s']:.2f}x); "
                         f"Ray's cost over the local engine {(s[b]['wall_s'] - s[a]['wall_s']) / n:+.1f} s a point")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
