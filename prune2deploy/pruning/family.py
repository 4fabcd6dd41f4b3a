"""A family of structured models from one run: `--speedup 1.5,2,3` (a ladder of targets).

The gradual schedule rises to the last rung; each rung below it gets its own pruning event,
at exactly its fraction of the dense model's time removed (`place_rungs`), where the latency
loop measures that member's widths against its target. The member is snapshot at the next
event (after the schedule's steps at its width), made compact and recovered briefly
(`recover`): one run, a member per rung, each validated, exported and benched; the verdict
ships the fastest member that keeps the accuracy gate.

The last rung is the run's main model (`prune/model`, bench label "sparse"); a member below it
is `prune/members/<name>/model`, bench label `sparse@<name>` (`label`), name e.g. "1.5x".
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import UserError
from . import masks as M

STANDARD_RUNGS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
LABEL_PREFIX = "sparse@"


def default_ladder(target: float) -> tuple[float, ...]:
    """A single `--speedup X`: the two standard rungs below X (1.5, 2, 3, 4, 6, ...), then X."""
    below = [r for r in STANDARD_RUNGS if r < target - 1e-9]
    return tuple(below[-2:]) + (float(target),)


def ladder_of(p) -> tuple[float, ...]:
    """The run's rungs, ascending; the last is `p.target_speedup`."""
    if not p.target_speedup:
        return ()
    return tuple(p.ladder) if p.ladder else default_ladder(p.target_speedup)


def name_of(speedup: float) -> str:
    return f"{speedup:g}x"


def label(name: str) -> str:
    return LABEL_PREFIX + name


def member_of_label(model_label: str) -> str | None:
    return model_label[len(LABEL_PREFIX):] if model_label.startswith(LABEL_PREFIX) else None


def check_ladder(ladder, target: float | None = None) -> tuple[float, ...]:
    """Every rung a finite number > 1, rising (no repeats); the last one the run's target."""
    try:
        values = tuple(float(x) for x in ladder)
    except (TypeError, ValueError):
        raise UserError(f"--speedup: a ladder is numbers > 1, rising (1.5,2,3), got {ladder!r}") from None
    text = ",".join(f"{x:g}" for x in values)
    if not values:
        raise UserError("--speedup: the ladder is empty")
    bad = next((x for x in values if not (x > 1.0 and math.isfinite(x))), None)
    if bad is not None:
        raise UserError(f"--speedup {text}: every target must be a number > 1, got {bad:g}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise UserError(f"--speedup {text}: the ladder must rise, each target above the one before (no repeats)")
    if len({name_of(x) for x in values}) != len(values):
        raise UserError(f"--speedup {text}: two targets share a name ({', '.join(map(name_of, values))})")
    if target is not None and abs(values[-1] - target) > 1e-9:
        raise UserError(f"prune.ladder {text} must end at the run's --speedup {target:g}")
    return values


def parse_ladder(text: str) -> tuple[float, ...]:
    """`--speedup 1.5,2,3` (or one number) as rungs; one line on bad input."""
    parts = [x.strip() for x in str(text).split(",")]
    try:
        values = tuple(float(x) for x in parts)
        if len(values) == 1 and not (values[0] > 1.0 and math.isfinite(values[0])):
            raise ValueError
    except ValueError:
        raise UserError(
            f"--speedup must be a number > 1 (the dense model's time over the pruned one's) or a rising ladder "
            f"such as 1.5,2,3, got '{text}'") from None
    return check_ladder(values)


def place_rungs(events: list[tuple[int, float]], rungs: list[float],
                strict: bool = True) -> tuple[list[tuple[int, float]], list[float]]:
    """(the schedule's events with each rung below the last at its own event, the rungs placed):
    the first event at or past a rung's fraction of time removed takes exactly that fraction (the
    schedule stays rising). With too few events before the final one: refused when `strict` (a
    ladder the user gave), else the lowest rungs are left out (the default ladder)."""
    rungs = sorted(rungs)
    while not strict and len(rungs) > max(0, len(events) - 1):
        rungs = rungs[1:]
    try:
        return _place(events, rungs), rungs
    except UserError:
        if strict or not rungs:
            raise
        return place_rungs(events, rungs[1:], strict=False)


def _place(events: list[tuple[int, float]], rungs: list[float]) -> list[tuple[int, float]]:
    out = list(events)
    last = len(out) - 1
    prev = -1
    for r in rungs:
        i = next((k for k in range(prev + 1, last) if out[k][1] >= r - 1e-12), None)
        if i is None and prev + 1 < last:
            i = last - 1  # every event before the final one is below the rung: the last of them reaches it
        if i is None:
            raise UserError(
                f"--speedup ladder: the schedule has {len(out)} pruning events, too few for {len(rungs)} rungs below "
                "the last (each needs an event before the final one): fewer rungs, or a smaller prune.prune_freq")
        out[i] = (out[i][0], r)
        prev = i
    return out


class Snapshots:
    """Each member as the schedule left it (the model's weights and its masks), kept in memory and,
    on rank 0, on disk under the run's checkpoints (a resumed prune stage finds them there)."""

    def __init__(self, folder: Path, model, modules: dict, rank: int = 0):
        self.folder, self.model, self.modules, self.rank = Path(folder), model, modules, rank
        self.kept: dict[str, tuple[dict, dict]] = {}

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.safetensors"

    def take(self, name: str) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().clone().contiguous() for k, v in self.model.state_dict().items()}
        masks = {k: m.cpu().clone() for k, m in M.get_masks(self.modules).items()}
        self.kept[name] = (state, masks)
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.path(name).with_suffix(".tmp")
            save_file({**{f"model/{k}": v for k, v in state.items()}, **{f"mask/{k}": m for k, m in masks.items()}},
                      str(tmp))
            os.replace(tmp, self.path(name))

    def get(self, name: str) -> tuple[dict, dict]:
        if name not in self.kept:
            from safetensors.torch import load_file

            if not self.path(name).is_file():
                raise UserError(f"prune: member {name} has no snapshot ({self.path(name)}): redo the stage, --force")
            flat = load_file(str(self.path(name)))
            self.kept[name] = ({k[6:]: v for k, v in flat.items() if k.startswith("model/")},
                               {k[5:]: v for k, v in flat.items() if k.startswith("mask/")})
        return self.kept[name]


def recover(name: str, snapshots: Snapshots, build, prunable, cfg, steps: int, features, tokenizer, teacher,
            check) -> tuple[object, dict]:
    """Member `name`: its snapshot made compact (the removed heads and neurons cut out) and trained
    `steps` more steps with the run's KD, the learning rate falling from the recipe's to its
    minimum. `build()` makes a model of the student's architecture, `prunable(model)` its
    prunable modules, `cfg` the main training's FitConfig, `check(structure, modules, masks)`
    that the masks remove whole structures. Returns the compact model and its kept structures."""
    from ..train.compaction import make_compact
    from ..train.loop import fit
    from .structures import Structure

    state, masks = snapshots.get(name)
    model = build()
    modules = prunable(model)
    M.attach_masks(modules)
    model.load_state_dict(state, strict=True)
    M.set_masks(modules, masks)
    structure = Structure.of(model, modules)
    check(structure, modules, masks)
    kept = structure.kept(modules)
    make_compact(model, modules, kept)
    if steps > 0:
        lr, lr_min = cfg.lr_at(0), cfg.lr_at(cfg.total_steps)
        member_cfg = replace(
            cfg, total_steps=steps, lr_at=lambda s: lr + (lr_min - lr) * s / max(1, steps), prune_events={},
            description=f"recover member {name}", checkpoint=None, checkpoint_every=0)
        fit(model, features, tokenizer, member_cfg, teacher=teacher)
    model.to(torch.device("cpu"))
    return model, kept
