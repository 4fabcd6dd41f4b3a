"""A sparsity sweep: the pipeline once per (method, sparsity) point, sharing the teacher.

Every point is a normal run dir (`<root>/<task>-<method>-<sparsity>`), so a re-run skips the
stages already done and `p2d report` reads the points like any run. The teacher is trained
once: its cache key (runs/_teachers/<task>-<hash>) is the same for every point. All points'
recipes are built and checked before any training starts, so bad input fails in seconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .train import distributed as D
from .errors import UserError
from .files import write_json_atomic
from .progress import log
from .recipe import Recipe, load_recipe, validate
from .run import default_run_dir, preflight, run_pipeline


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
    task: str, profile: str, sparsities: list[float], methods: list[str], overrides: dict, recipe_file=None
) -> list[Recipe]:
    base = load_recipe(task, profile, overrides, recipe_file=recipe_file)
    points = []
    for method in methods:
        for s in sparsities:
            r = replace(base, prune=replace(base.prune, method=method, target_sparsity=s))
            validate(r)
            points.append(r)
    return points


def run_sweep(points: list[Recipe], root: Path, force: bool = False) -> dict:
    preflight(points[0])  # model, teacher, data and runtimes are shared by every point
    summary = {"task": points[0].task, "profile": points[0].profile, "points": []}
    out = Path(root) / f"sweep-{points[0].task}-{points[0].profile}.json"
    for i, recipe in enumerate(points, 1):
        run_dir = default_run_dir(recipe, root)
        log(
            f"[bold]sweep point {i}/{len(points)}[/bold]: {recipe.prune.method} @ {recipe.prune.target_sparsity:g} → {run_dir}"  # noqa: E501 - one message/literal
        )
        try:
            report = run_pipeline(recipe, run_dir, force=force)
            if not D.is_main():  # several processes: rank 0 keeps the summary
                continue
            metric = report.get("metric")
            summary["points"].append(
                {
                    "method": recipe.prune.method,
                    "sparsity": recipe.prune.target_sparsity,
                    "run_dir": str(run_dir),
                    "status": "done",
                    "metric": metric,
                    "dense": report["metrics"]["dense"].get(metric),
                    "sparse": report["metrics"]["sparse"].get(metric),
                }
            )
        except UserError:
            raise  # bad input (e.g. a run dir of another config): stop, as `p2d run` would
        except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
            log(
                f"[red]sweep point {recipe.prune.method} @ {recipe.prune.target_sparsity:g} failed: {type(e).__name__}: {e}[/red]"  # noqa: E501 - one message/literal
            )
            summary["points"].append(
                {
                    "method": recipe.prune.method,
                    "sparsity": recipe.prune.target_sparsity,
                    "run_dir": str(run_dir),
                    "status": "failed",
                    "error": f"{type(e).__name__}: {e}",
                }
            )
        if D.is_main():
            write_json_atomic(out, summary)
    summary["path"] = str(out)
    return summary
