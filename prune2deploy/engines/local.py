"""The local engine: the points one after another in this process (under a launcher, every
rank runs every point and rank 0 keeps the summary)."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError
from ..progress import log
from ..recipe import Recipe
from ..run import run_pipeline
from ..sweep import entry, label
from ..train import distributed as D


def check_available() -> None:
    """Always: it needs nothing beyond p2d."""


def run_points(points: list[Recipe], dirs: list[Path], root: Path, force: bool, done, **options) -> None:
    if options:
        raise UserError(f"--engine local takes no {', '.join('--' + k.replace('_', '-') for k in options)}")
    for i, (recipe, run_dir) in enumerate(zip(points, dirs)):
        log(f"[bold]sweep point {i + 1}/{len(points)}[/bold]: {label(recipe)} → {run_dir}")
        started = time.time()
        try:
            report = run_pipeline(recipe, run_dir, force=force)
            if not D.is_main():  # several processes: rank 0 keeps the summary
                continue
            point = entry(recipe, run_dir, report, seconds=round(time.time() - started, 1))
        except UserError:
            raise  # bad input (e.g. a run dir of another config): stop, as `p2d run` would
        except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
            log(f"[red]sweep point {label(recipe)} failed: {type(e).__name__}: {e}[/red]")
            point = entry(recipe, run_dir, error=f"{type(e).__name__}: {e}")
        if D.is_main():
            done(i, point)
