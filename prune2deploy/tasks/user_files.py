"""The user's own labelled files, read through `datasets`' local loaders (csv, json/jsonl, parquet).

Splits: `data.train_file` / `data.eval_file` when named (paths, or names under --data-dir); else
under --data-dir a `train.*` file and a `validation.*`, `dev.*` or `test.*` file; a train file
alone is split by a seeded hold-out (`data.eval_split_fraction`), said in the report. A file
whose type none of the loaders reads, an empty file, a missing column: one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

LOADERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
EVAL_NAMES = ("validation", "dev", "test")
HOLDOUT_SEED = 1234


def _find(root: Path, stem: str, extra: tuple[str, ...] = ()) -> Path | None:
    for ext in (*LOADERS, *extra):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    return None


def _named(recipe, name: str | None) -> Path | None:
    if not name:
        return None
    p = Path(name).expanduser()
    if not p.is_absolute() and recipe.data.data_dir:
        p = Path(recipe.data.data_dir).expanduser() / p
    if not p.is_file():
        raise UserError(f"data file not found: {p}")
    return p


def split_files(recipe, task: str, extra_exts: tuple[str, ...] = ()) -> tuple[Path, Path | None]:
    """(train file, eval file or None for a hold-out)."""
    d = recipe.data
    train, dev = _named(recipe, d.train_file), _named(recipe, d.eval_file)
    if train is None:
        if not d.data_dir or d.data_dir == "hub":
            raise UserError(f"task '{task}' trains on your files: pass --data-dir DIR (with train.csv/.jsonl/.json/"
                            ".parquet) or --set data.train_file=FILE")
        root = Path(d.data_dir).expanduser()
        if root.is_file():
            train = root
        elif not root.is_dir():
            raise UserError(f"--data-dir is not a directory or file: {root}")
        else:
            train = _find(root, "train", extra_exts)
            if train is None:
                raise UserError(f"{root}: no train file (train.csv, .tsv, .json, .jsonl, .parquet"
                                + "".join(f", {e}" for e in extra_exts) + "); or name one with --set data.train_file=")
            if dev is None:
                dev = next((f for f in (_find(root, n, extra_exts) for n in EVAL_NAMES) if f), None)
    return train, dev


def read_rows(path: Path) -> list[dict]:
    """Every row of one csv/tsv/json/jsonl/parquet file, as dicts."""
    kind = LOADERS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: cannot read a '{path.suffix}' file (csv, tsv, json, jsonl, parquet)")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        ds = load_dataset(kind, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a file it cannot parse
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"{path}: not readable as {kind} ({msg})") from None
    if len(ds) == 0:
        raise UserError(f"{path}: no rows")
    return ds.to_list()


def need_columns(path: Path, rows: list[dict], columns: tuple[str, ...], hint: str) -> None:
    have = set(rows[0])
    missing = [c for c in columns if c not in have]
    if missing:
        raise UserError(f"{path}: no column '{missing[0]}' (has {', '.join(sorted(have))}; {hint})")


def holdout(rows: list, fraction: float) -> tuple[list, list]:
    from .classification import holdout_split

    return holdout_split(rows, fraction, HOLDOUT_SEED)


def split_info(train: Path, dev: Path | None, fraction: float) -> dict:
    if dev is None:
        return {"source": str(train), "split": f"seeded hold-out {fraction:.0%} of {train.name} (seed {HOLDOUT_SEED})"}
    return {"source": f"{train} + {dev}", "split": f"{train.name} / {dev.name}"}
