"""Small file helpers: atomic writes, hashing, JSON records."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def hash_dir(path: str | Path) -> dict[str, str]:
    """sha256 of every file under `path`, keyed by its relative posix path."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def inside(root: str | Path, rel: str | Path, what: str = "path") -> Path:
    """`root / rel`, refusing a path (from a record or manifest) that escapes `root`."""
    from .errors import UserError

    root_r = Path(root).resolve()
    full = (root_r / rel).resolve()
    if full != root_r and root_r not in full.parents:
        raise UserError(f"{what} '{rel}' points outside {root}; refusing to follow it (edited record?)")
    return full


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temp dir into place, removing what stood there before."""
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        final_dir.rename(old)
    tmp_dir.rename(final_dir)
    if old.exists():
        shutil.rmtree(old)
