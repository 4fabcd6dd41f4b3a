"""Sweep engines: what runs a sweep's points. `local` (the default) runs them one after another
in this process; `ray` submits each as a task to a Ray cluster. An engine is one module with
`run_points(points, dirs, root, force, done, **options)` plus its name here; `done(i, entry)`
hands each finished point's summary entry (`sweep.entry`) back as it ends."""

from __future__ import annotations

import importlib

from ..errors import UserError

ENGINES = {"local": "local", "ray": "ray_cluster"}  # engine name: its module here


def get_engine(name: str):
    if name not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got '{name}'")
    module = importlib.import_module(f".{ENGINES[name]}", __package__)
    module.check_available()
    return module.run_points
