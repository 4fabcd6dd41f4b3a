"""Progress bars for long work (rich); quiet when P2D_QUIET=1."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if os.environ.get("P2D_QUIET") == "1":
        yield from items
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total if total is not None else len(items), info="")  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.advance(task)


class Bar:
    """A progress bar driven by hand (`update(info=...)`), for training loops."""

    def __init__(self, description: str, total: int):
        self.quiet = os.environ.get("P2D_QUIET") == "1"
        self.progress = None
        if not self.quiet:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
            self.progress = Progress(*columns, console=console)
            self.task = self.progress.add_task(description, total=total, info="")

    def __enter__(self):
        if self.progress:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.progress:
            kw = {"info": info} if info is not None else {}
            self.progress.update(self.task, advance=n, **kw)


def log(msg: str) -> None:
    if os.environ.get("P2D_QUIET") != "1":
        console.print(msg, highlight=False)
