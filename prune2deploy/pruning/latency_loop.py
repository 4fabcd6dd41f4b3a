"""The latency loop: a structured target is met as measured, not as predicted.

The search (`allocation.allocate`) picks widths on the latency table's prediction. The loop
then exports that shape as the artifact ships (random weights), times it beside the dense
model on the target runtime at every bench shape (`latency_table.ShapeTimer`), and, where the
measured speedup misses the target at any shape, folds the measurement into the table
(`Table.refit`: the table passes through every measured point) and searches again. It stops
when the search returns a shape already measured, and takes, of the measured shapes that meet
the target at every shape, the one whose removal costs the least (the search's own loss): an
optimistic table is corrected, a pessimistic one does not make it remove more than needed.
A miss by less than `retime` is timed once more before it counts (batch 1 moves ~20% between
runs on some CPUs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UserError
from ..progress import log


@dataclass
class Measured:
    counts: dict[str, list[int]]
    removal: object  # what the search returned, handed back for the chosen shape
    loss: float  # the search's loss of this removal (lower: less removed where it matters)
    predicted: list[float]  # the table's speedup per shape before this measurement
    dense_ms: list[float]
    ms: list[float]
    reference: list[str] = field(default_factory=list)  # per shape: the dense graph timed against

    @property
    def speedups(self) -> list[float]:
        return [d / m for d, m in zip(self.dense_ms, self.ms)]


@dataclass
class LoopResult:
    chosen: Measured | None
    table: object  # the table refitted with every measurement
    trail: list[Measured] = field(default_factory=list)
    met: bool = False

    def record(self, target: float, shapes) -> dict:
        """What the prune record keeps: target, predicted and measured speedup per shape."""
        def per_shape(xs):
            return {f"b{b}s{s}": round(x, 4) for (b, s), x in zip(shapes, xs)}

        c = self.chosen
        return {
            "target_speedup": target,
            "met": self.met,
            "runtime": self.table.runtime,
            "predicted_speedup": per_shape(c.predicted) if c else None,
            "measured_speedup": per_shape(c.speedups) if c else None,
            "dense_ms": per_shape(c.dense_ms) if c else None,
            "ms": per_shape(c.ms) if c else None,
            "reference": ({f"b{b}s{s}": r for (b, s), r in zip(shapes, c.reference)} or None) if c else None,
            "rounds": [{"heads": m.counts["heads"], "ffn": m.counts["ffn"], "predicted": per_shape(m.predicted),
                        "measured": per_shape(m.speedups)} for m in self.trail],
        }


def close_loop(search: Callable, table, timer: Callable, target: float, max_rounds: int = 8,
               retime: float = 0.05, label: str = "") -> LoopResult:
    """`search(table) -> (removal, counts, loss)` under `table`'s prediction for `target`;
    `timer(counts) -> (dense_ms, ms)` per shape. Returns the chosen measured shape and the
    refitted table (see the module's docstring)."""
    measured: dict[str, Measured] = {}
    trail: list[Measured] = []
    t = table
    for _ in range(max_rounds):
        try:
            removal, counts, loss = search(t)
        except UserError:  # the corrected table says even removing everything misses: stop here
            break
        key = json.dumps(counts, sort_keys=True)
        if key in measured:
            break  # the table agrees with its measurements here: settled
        predicted = [f / p for f, p in zip(t.full_ms, t.ms(counts))]
        dense_ms, ms = timer(counts)
        refs = list(getattr(timer, "references", []))
        m = Measured(counts, removal, loss, predicted, dense_ms, ms, refs)
        if min(m.speedups) < target <= min(m.speedups) * (1 + retime):  # a near miss: time it again
            d2, m2 = timer(counts)
            m = Measured(counts, removal, loss, predicted, [(a + b) / 2 for a, b in zip(dense_ms, d2)],
                         [(a + b) / 2 for a, b in zip(ms, m2)], refs)
        measured[key] = m
        trail.append(m)
        log(f"[dim]latency loop{label}: heads {counts['heads']}, FFN {counts['ffn']}: predicted "
            f"{' / '.join(f'{x:.2f}x' for x in predicted)}, measured {' / '.join(f'{x:.2f}x' for x in m.speedups)} "
            f"on {t.runtime}[/dim]")
        t = t.refit(counts, dense_ms, ms)
    ok = [m for m in trail if min(m.speedups) >= target]
    if ok:
        return LoopResult(min(ok, key=lambda m: (m.loss, -sum(m.counts["heads"]) - sum(m.counts["ffn"]))), t, trail,
                          True)
    if not trail:
        return LoopResult(None, t, trail, False)
    best = max(trail, key=lambda m: min(m.speedups))  # nothing met it: the fastest measured, said so
    log(f"[yellow]latency loop{label}: no measured shape reached {target:g}x on {t.runtime}; the fastest "
        f"measured is {' / '.join(f'{x:.2f}x' for x in best.speedups)}[/yellow]")
    return LoopResult(best, t, trail, False)
