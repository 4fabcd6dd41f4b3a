"""Progress bars for long work (rich); quiet when P2D_QUIET=1."""

from __future__ import annotations

import os
import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if _quiet():
        yield from items
        return
    with Bar(description, total if total is not None else len(items)) as bar:  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.advance()


class Bar:
    """A progress bar driven by hand (`advance(info=...)`), for training loops.

    On a terminal: a live rich bar. Otherwise (CI logs, files): a plain line every 10%.
    """

    def __init__(self, description: str, total: int):
        self.quiet = _quiet()
        self.progress = None
        self.description, self.total, self.done, self.next_mark = description, max(1, total), 0, 0.1
        self.started = time.time()
        self.plain = not self.quiet and not console.is_terminal
        if not self.quiet and not self.plain:
            columns = [
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            ]
            self.progress = Progress(*columns, console=console)
            self.task = self.progress.add_task(description, total=total, info="")

    def __enter__(self):
        if self.progress:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)

    def extend(self, total: int) -> None:
        """The work grew (or shrank) to `total` steps."""
        self.total = max(1, total)
        while self.next_mark > 0.1 + 1e-9 and self.done / self.total < self.next_mark - 0.1 - 1e-9:
            self.next_mark -= 0.1
        if self.progress:
            self.progress.update(self.task, total=self.total)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.done += n
        if self.progress:
            kw = {"info": info} if info is not None else {}
            self.progress.update(self.task, advance=n, **kw)
        elif self.plain and self.done / self.total >= self.next_mark - 1e-9:
            while self.done / self.total >= self.next_mark - 1e-9:
                self.next_mark += 0.1
            elapsed = time.time() - self.started
            console.print(
                f"{self.description}: {self.done}/{self.total} ({self.done / self.total:.0%}) {elapsed:.0f}s {info or ''}",  # noqa: E501 - one message/literal
                highlight=False,
            )


def _quiet() -> bool:
    """P2D_QUIET=1, or a process other than rank 0 of several (one bar, one log: rank 0's)."""
    return os.environ.get("P2D_QUIET") == "1" or os.environ.get("RANK", "0") != "0"


def log(msg: str) -> None:
    if not _quiet():
        console.print(msg, highlight=False)


def warn(msg: str) -> None:
    """One line on stderr, even when quiet: something the user should know happened."""
    console.print(f"[yellow]{msg}[/yellow]", highlight=False, soft_wrap=True)
