"""Recovery study: which levers bring the pruned model back to the dense teacher's accuracy.

Each row is a set of recipe overrides on top of a task's default profile. A row runs teacher
(cached, or `--teacher PATH`) → prune → validate through the ordinary stage runner, in its own
run dir, and its result (metric dense/sparse, retention, prune steps, seconds, s/step, CPU)
goes to `<out>/<mode>/<row>-s<seed>.json`, with a summary table in `<out>/<mode>/summary.md`.

Modes:
- `proxy`: a cheap screen. Every schedule time (epochs, prune_start/end/freq) is multiplied by
  `--proxy-scale` (default 0.25) and the dev set cut to `--proxy-eval` questions.
- `default`: the default profile as a user gets it (the confirmation).

    python benchmarks/recovery_study.py squad --mode proxy --rows base,gradual,layer
    python benchmarks/recovery_study.py squad --mode default --rows chosen --seeds 0,1
    python benchmarks/recovery_study.py squad --list

A row already done (its JSON exists) is skipped; delete the file to rerun it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prune2deploy.measure.machine import cpu_label  # noqa: E402

# Rows: name -> (what it tests, overrides at default-profile scale; times in epochs). Every row
# is written in full against the squad recipe from before this study (BEFORE), so a rerun
# reproduces it whatever the default profile says today.
BEFORE = {
    "prune.method": "gmp",
    "prune.scope": "global",
    "prune.epochs": 2.0,
    "prune.init_sparsity": 0.7,
    "prune.prune_start": 0.13,
    "prune.prune_end": 1.5,
    "prune.prune_freq": 0.2,
    "prune.lr": 1.6e-4,
    "prune.lr_min": 1.6e-5,
    "prune.kd_temperature": 2.0,
    "prune.kd_hardness": 1.0,
}
GRADUAL = {"prune.init_sparsity": 0.3, "prune.prune_start": 0.0, "prune.prune_end": 1.5, "prune.prune_freq": 0.1}
LR2X = {"prune.lr": 3.2e-4, "prune.lr_min": 3.2e-5}
LR4X_B8 = {"prune.lr": 6.4e-4, "prune.lr_min": 6.4e-5, "prune.batch_size": 8}  # today's default LR and batch
TODAY = {**GRADUAL, **LR4X_B8, "prune.kd_temperature": 1.0}  # the default since the second study (gradual_lr4x_b8_t1)
FRESH = {"prune.train_examples": 10000, "prune.epochs": 1.0}  # one pass over 10k questions: the same steps as 2 x 5k

_rows = {
    "base": (
        "the recipe before this study: first step to 0.7 at 0.13 ep, a step every 0.2 ep, target at 1.5 of 2 ep",
        {},
    ),
    "layer": ("base, per-layer (uniform) instead of global ranking", {"prune.scope": "layer"}),
    "lr2x": ("base with twice the LR (3.2e-4 -> 3.2e-5)", LR2X),
    "t1": ("base, KD temperature 1", {"prune.kd_temperature": 1.0}),
    "obert": ("base schedule, oBERT", {"prune.method": "obert"}),
    "gradual": ("small first step (0.3) at step 0, a step every 0.1 ep to the target at 1.5 ep", GRADUAL),
    "gradual_layer": ("gradual + per-layer", {**GRADUAL, "prune.scope": "layer"}),
    "gradual_fresh": (
        "gradual, one pass over 10k questions instead of two over the teacher's 5k (same steps)",
        {**GRADUAL, **FRESH, "prune.prune_end": 0.75, "prune.prune_freq": 0.05},
    ),
    # the default profile since this study
    "gradual_lr2x": ("gradual with twice the LR (3.2e-4 -> 3.2e-5): the default since this study", {**GRADUAL, **LR2X}),
    # for the next study (not run yet)
    "gradual_lr4x": (
        "gradual with 4x the LR (6.4e-4 -> 6.4e-5)",
        {**GRADUAL, "prune.lr": 6.4e-4, "prune.lr_min": 6.4e-5},
    ),
    "gradual_lr2x_3ep": (
        "the default, 3 epochs instead of 2 (target at 2.25 ep, a step every 0.15 ep)",
        {**GRADUAL, **LR2X, "prune.epochs": 3.0, "prune.prune_end": 2.25, "prune.prune_freq": 0.15},
    ),
    "gradual_lr2x_t1": ("the default with KD temperature 1", {**GRADUAL, **LR2X, "prune.kd_temperature": 1.0}),
    "gradual_lr2x_b8": (
        "the default with batch 8 instead of 16: twice the optimizer steps over the same data",
        {**GRADUAL, **LR2X, "prune.batch_size": 8},
    ),
    "gradual_lr4x_b8": (
        "gradual with 4x the LR and batch 8: both levers that helped alone",
        {**GRADUAL, **LR4X_B8},
    ),
    "gradual_lr8x": (
        "gradual with 8x the LR (1.28e-3 -> 1.28e-4)",
        {**GRADUAL, "prune.lr": 1.28e-3, "prune.lr_min": 1.28e-4},
    ),
    # KD levers on today's default (gradual_lr4x_b8): temperature and hardness
    "gradual_lr4x_b8_t1": ("the default, KD temperature 1", TODAY),
    "gradual_lr4x_b8_t4": ("the default, KD temperature 4", {**GRADUAL, **LR4X_B8, "prune.kd_temperature": 4.0}),
    "gradual_lr4x_b8_h05": (
        "today's default with KD hardness 0.5 (half the loss from the gold answer spans)",
        {**GRADUAL, **LR4X_B8, "prune.kd_hardness": 0.5},
    ),
    # rows of the later studies, on today's default (gradual_lr4x_b8_t1): full length, `--mode default`
    "gradual_lr4x_b8_t1_f05": (
        "the default, a pruning step every 0.05 epoch (31 steps) instead of 0.1",
        {**TODAY, "prune.prune_freq": 0.05},
    ),
    "gradual_lr4x_b8_t1_h05": (
        "the default, KD hardness 0.5 (half the loss from the gold answer spans)",
        {**TODAY, "prune.kd_hardness": 0.5},
    ),
    "gradual_lr2x_end1": (
        "the default reaching the target at 1.0 ep instead of 1.5 (a step every 0.067 ep): half the run recovers",
        {**GRADUAL, **LR2X, "prune.prune_end": 1.0, "prune.prune_freq": 1.0 / 15},
    ),
    "gradual_lr2x_obert": (
        "the default schedule with oBERT (16 pruning steps of 64 gradients)",
        {**GRADUAL, **LR2X, "prune.method": "obert"},
    ),
}
ROWS: dict[str, tuple[str, dict]] = {name: (what, {**BEFORE, **over}) for name, (what, over) in _rows.items()}
TIME_FIELDS = ("prune.epochs", "prune.prune_start", "prune.prune_end", "prune.prune_freq")


def row_overrides(
    task: str, row: str, mode: str, scale: float, proxy_eval: int, teacher: str | None, sparsity: float
) -> dict:
    over = {"prune.target_sparsity": sparsity, **ROWS[row][1]}
    if teacher:
        over["teacher.path"] = teacher
    if mode == "proxy":  # every row carries the time fields (from BEFORE)
        for key in TIME_FIELDS:
            over[key] = float(over[key]) * scale
        over["data.eval_examples"] = proxy_eval
    return over


def run_row(task: str, row: str, seed: int, args) -> dict:
    from prune2deploy.recipe import load_recipe
    from prune2deploy.run import prepare_run_dir, run_stage

    over = row_overrides(task, row, args.mode, args.proxy_scale, args.proxy_eval, args.teacher, args.sparsity)
    over["seed"] = seed
    recipe = load_recipe(task, "default", over)
    run_dir = Path(args.root) / f"{task}-{args.mode}-{row}-{args.sparsity:g}-s{seed}"
    prepare_run_dir(recipe, run_dir, force=True)
    rec = {}
    for stage in ("teacher", "prune", "validate"):
        rec[stage] = run_stage(stage, recipe, run_dir)
    v, p = rec["validate"]["result"], rec["prune"]
    metric = v["metric"]
    steps = p["result"]["total_steps"]
    return {
        "task": task, "row": row, "what": ROWS[row][0], "mode": args.mode, "seed": seed, "sparsity": args.sparsity,
        "overrides": over, "metric": metric, "dense": v["dense"], "sparse": v["sparse"], "retained": v["retained"],
        "prune_steps": steps, "prune_events": p["result"]["prune_steps"], "prune_seconds": p["seconds"],
        "s_per_step": round(p["seconds"] / max(1, steps), 3), "teacher_seconds": rec["teacher"]["seconds"],
        "validate_seconds": rec["validate"]["seconds"], "per_layer": p["result"]["sparsity"]["per_layer"],
        "cpu": cpu_label(), "run_dir": str(run_dir), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def summary(out: Path) -> str:
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("*-s*.json"))]
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(f"{r['row']}@{r['sparsity']:g}", []).append(r)
    lines = [
        "| row | sparsity | what | metric | dense | sparse (per seed) | retained (mean) | prune steps | s/step | CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, rs in sorted(by.items(), key=lambda kv: -statistics.mean(r["retained"] for r in kv[1])):
        m = rs[0]["metric"]
        sparse = " / ".join(f"{r['sparse'][m]:.2f}" for r in rs)
        dense = " / ".join(sorted({f"{r['dense'][m]:.2f}" for r in rs}))
        ret = statistics.mean(r["retained"] for r in rs)
        lines.append(
            f"| {rs[0]['row']} | {rs[0]['sparsity']:g} | {rs[0]['what']} | {m} | {dense} | {sparse} | {100 * ret:.1f}% | "  # noqa: E501 - one message/literal
            f"{rs[0]['prune_steps']} | {statistics.mean(r['s_per_step'] for r in rs):.2f} | {rs[0]['cpu']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--mode", choices=("proxy", "default"), default="proxy")
    ap.add_argument("--rows", default="base")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--teacher", help="a fine-tuned dense model dir (skips teacher training)")
    ap.add_argument("--proxy-scale", type=float, default=0.25)
    ap.add_argument("--proxy-eval", type=int, default=300)
    ap.add_argument("--root", default="runs/study")
    ap.add_argument("--out", default="benchmarks/results/recovery_study")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, (what, over) in ROWS.items():
            print(f"{name:14s} {what}\n{'':14s} {over}")
        return 0
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        print(f"unknown row '{unknown[0]}' (known: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    out = Path(args.out) / args.task / args.mode
    out.mkdir(parents=True, exist_ok=True)
    for row in args.rows.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            path = out / f"{row}-{args.sparsity:g}-s{seed}.json"
            if path.is_file():
                print(f"{path}: done, skipped")
                continue
            result = run_row(args.task, row, seed, args)
            path.write_text(json.dumps(result, indent=1))
            print(
                f"{row} s{seed}: {result['metric']} {result['sparse'][result['metric']]:.2f} / dense {result['dense'][result['metric']]:.2f} "  # noqa: E501 - one message/literal
                f"= {100 * result['retained']:.1f}% ({result['prune_steps']} steps, {result['prune_seconds']:.0f} s)",
                flush=True,
            )
            (out / "summary.md").write_text(summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
