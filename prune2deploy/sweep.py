"""A sweep: the pipeline once per point (method × target × seed), sharing the teacher.

Every point is a normal run dir (`<root>/<task>-<method>-<target>[-seed<N>]`), so a re-run skips
the stages already done and `p2d report` reads the points like any run. A target is a sparsity
(unstructured) or a speedup (structured, `--speedup`). The teacher is trained once per distinct
teacher (its cache key, `<root>/_teachers/<task>-<hash>`, is the same for every point of one
seed). All points' recipes are built and checked before any training starts, so bad input fails
in seconds. An engine (`engines/`: local, ray) runs the points; the summary is the same for both.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from .errors import UserError
from .files import write_json_atomic
from .recipe import Recipe, load_recipe, validate
from .run import default_run_dir, preflight


def parse_list(text: str, what: str, cast=str) -> list:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise UserError(f"--{what} needs at least one value")
    out = []
    for x in items:
        try:
            out.append(cast(x))
        except ValueError:
            raise UserError(f"--{what}: expected a number, got '{x}'") from None
    if len(set(out)) != len(out):
        raise UserError(f"--{what}: duplicate value in '{text}'")
    return out


def plan_points(
    task: str,
    profile: str,
    sparsities: list[float] | None,
    methods: list[str],
    overrides: dict,
    recipe_file=None,
    speedups: list[float] | None = None,
    seeds: list[int] | None = None,
) -> list[Recipe]:
    """One recipe per (method, target, seed). Targets are sparsities or speedups, not both."""
    if sparsities and speedups:
        raise UserError("--speedup (structured) and --sparsity (unstructured) are two kinds of target: pass one")
    for x in speedups or []:
        if not (x > 1.0 and math.isfinite(x)):
            raise UserError(f"--speedup: every value must be a number > 1, got {x:g}")
    base = load_recipe(task, profile, overrides, recipe_file=recipe_file)
    points = []
    for seed in seeds or [base.seed]:
        for method in methods:
            for target in speedups or sparsities:
                prune = (
                    # a sweep's point is one model (its targets are the sweep's): no family of its own
                    replace(base.prune, method=method, target_speedup=target, target_sparsity=0.0, pattern="structured",
                            ladder=(target,))
                    if speedups
                    else replace(base.prune, method=method, target_sparsity=target)
                )
                r = replace(base, seed=seed, prune=prune)
                validate(r)
                points.append(r)
    return points


def point_dir(recipe: Recipe, root: Path, seeded: bool) -> Path:
    d = default_run_dir(recipe, root)
    return d.with_name(f"{d.name}-seed{recipe.seed}") if seeded else d


def label(recipe: Recipe) -> str:
    p = recipe.prune
    target = f"{p.target_speedup:g}x" if p.target_speedup else f"{p.target_sparsity:g}"
    return f"{p.method} @ {target} (seed {recipe.seed})"


def entry(recipe: Recipe, run_dir: Path, report: dict | None = None, error: str | None = None, **extra) -> dict:
    """One point of the summary: what it was, where it is, how it ended."""
    p = recipe.prune
    out = {
        "method": p.method,
        "sparsity": p.target_sparsity,
        "speedup": p.target_speedup,
        "seed": recipe.seed,
        "run_dir": str(run_dir),
    }
    if error is not None:
        out.update(status="failed", error=error)
    elif report is None:
        out.update(status="not run")
    else:
        metric = report.get("metric")
        out.update(
            status="done",
            metric=metric,
            dense=report["metrics"]["dense"].get(metric),
            sparse=report["metrics"]["sparse"].get(metric),
        )
    return {**out, **extra}


def run_sweep(
    points: list[Recipe], root: Path, force: bool = False, engine: str = "local", seeded: bool = False, **options
) -> dict:
    """Run every point on `engine` (options: the engine's, e.g. ray's address and resources);
    the summary `<root>/sweep-<task>-<profile>.json` is written as points finish."""
    from .engines import get_engine

    run_points = get_engine(engine)  # an engine that is not installed fails before anything runs
    preflight(points[0])  # model, teacher, data and runtimes are shared by every point
    root = Path(root)
    out = root / f"sweep-{points[0].task}-{points[0].profile}.json"
    dirs = [point_dir(r, root, seeded) for r in points]
    summary = {"task": points[0].task, "profile": points[0].profile, "engine": engine,
               "points": [entry(r, d) for r, d in zip(points, dirs)]}

    def done(i: int, point: dict) -> None:  # an engine reports each point as it ends
        summary["points"][i] = point
        write_json_atomic(out, summary)

    run_points(points, dirs, root, force, done, **options)
    from .train import distributed as D

    if not D.is_main():  # several processes (a launcher): rank 0 keeps the summary
        summary["points"] = []
    summary["path"] = str(out)
    return summary
