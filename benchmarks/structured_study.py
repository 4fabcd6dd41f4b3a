"""The structured-pruning study: `p2d run TASK --speedup X` over criteria, distillation, width
layouts, targets and seeds; one run dir per row and one JSON of their results.

    python benchmarks/structured_study.py --task squad --root runs/structured [--rows a,b] \
        [--parallel 2] [-- EXTRA p2d run ARGS]

Rows (all from one teacher; the default profile unless EXTRA says otherwise):
  ziplm-2x          second-order (OBS with the layer-input Hessian), per-layer widths
  gmp-2x            magnitude (norm of each head's / neuron's output-projection columns), per-layer
  ziplm-2x-hidden   + token-level hidden-state distillation (prune.kd_hidden 1.0)
  ziplm-2x-uniform  the same widths in every layer: today's default (`p2d run squad --speedup 2`)
  ziplm-1.5x, ziplm-3x, gmp-1.5x, gmp-3x   other targets
  *-s1              seed 1 (its own data sample, the same teacher)
EXTRA goes to every run (e.g. --teacher DIR --model DIR --data-dir DIR --set prune.latency_table=FILE).
The JSON (ROOT/study-TASK.json) is rewritten after every row, so an interrupted study keeps what it has.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROWS = {
    "ziplm-2x": ["--speedup", "2", "-m", "ziplm", "--set", "prune.widths=per_layer"],
    "gmp-2x": ["--speedup", "2", "-m", "gmp", "--set", "prune.widths=per_layer"],
    "ziplm-2x-hidden": ["--speedup", "2", "-m", "ziplm", "--set", "prune.widths=per_layer",
                        "--set", "prune.kd_hidden=1.0"],
    "ziplm-2x-uniform": ["--speedup", "2", "-m", "ziplm", "--set", "prune.widths=uniform"],
    "ziplm-1.5x-uniform": ["--speedup", "1.5", "-m", "ziplm", "--set", "prune.widths=uniform"],
    "ziplm-3x-uniform": ["--speedup", "3", "-m", "ziplm", "--set", "prune.widths=uniform"],
    "ziplm-2x-uniform-s1": ["--speedup", "2", "-m", "ziplm", "--set", "prune.widths=uniform", "--seed", "1"],
    "gmp-2x-hidden": ["--speedup", "2", "-m", "gmp", "--set", "prune.widths=per_layer",
                      "--set", "prune.kd_hidden=1.0"],
    "ziplm-1.5x": ["--speedup", "1.5", "-m", "ziplm", "--set", "prune.widths=per_layer"],
    "ziplm-3x": ["--speedup", "3", "-m", "ziplm", "--set", "prune.widths=per_layer"],
    "gmp-1.5x": ["--speedup", "1.5", "-m", "gmp", "--set", "prune.widths=per_layer"],
    "gmp-3x": ["--speedup", "3", "-m", "gmp", "--set", "prune.widths=per_layer"],
    "ziplm-2x-s1": ["--speedup", "2", "-m", "ziplm", "--set", "prune.widths=per_layer", "--seed", "1"],
    "gmp-2x-s1": ["--speedup", "2", "-m", "gmp", "--set", "prune.widths=per_layer", "--seed", "1"],
}


def summarize(run_dir: Path) -> dict:
    rep = json.loads((run_dir / "report.json").read_text())
    metric = rep.get("metric")
    st = rep.get("structured") or {}
    return {
        "metric": metric,
        "dense": rep["metrics"]["dense"].get(metric),
        "pruned": rep["metrics"]["sparse"].get(metric),
        "retained": rep.get("retained"),
        "exact_match": rep["metrics"]["sparse"].get("exact_match"),
        "target_speedup": st.get("target_speedup"),
        "predicted_speedup": st.get("predicted_speedup"),
        "latency_runtime": st.get("latency_runtime"),
        "widths": st.get("widths"),
        "parameters": st.get("parameters"),
        "measured": st.get("measured"),
        "seconds": rep.get("seconds"),
        "cpu": (rep.get("bench_cpu") or {}).get("model"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="squad")
    ap.add_argument("--root", type=Path, default=Path("runs/structured"))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="results file (default ROOT/study-TASK.json)")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"unknown row(s) {', '.join(unknown)} (known: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    a.root.mkdir(parents=True, exist_ok=True)
    out = a.json or a.root / f"study-{a.task}.json"
    results = json.loads(out.read_text()) if out.is_file() else {}

    def one(name: str) -> None:
        run_dir = a.root / f"{a.task}-{name}"
        cmd = [sys.executable, "-m", "prune2deploy.cli", "run", a.task, *ROWS[name], "-o", str(run_dir), *a.extra]
        t0 = time.time()
        with open(a.root / f"{a.task}-{name}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        row = {"rc": rc, "wall_s": round(time.time() - t0, 1), "args": ROWS[name]}
        if rc == 0:
            row.update(summarize(run_dir))
        results[name] = row
        out.write_text(json.dumps(results, indent=1))
        print(f"{name}: rc={rc} {row.get('metric')} {row.get('pruned')} / {row.get('dense')} "
              f"retained {row.get('retained')} wall {row['wall_s']}s", flush=True)

    with ThreadPoolExecutor(max(1, a.parallel)) as pool:
        list(pool.map(one, rows))
    return 0 if all(results[r]["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
