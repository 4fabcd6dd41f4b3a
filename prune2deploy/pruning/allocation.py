"""The target search: which heads and FFN neurons to remove so the model meets a latency budget.

Each module (one layer's attention, one layer's FFN) comes with its removal order and the
cumulative loss of removing its first k structures (a `Curve`, from a criterion). Starting from
what is already removed, the search removes, step by step, the next structures of the module
whose loss per millisecond saved is smallest, until the latency table predicts the budget is
met (`per_layer`).

With `uniform` widths (every layer keeps the same heads and FFN width), the candidates are few
enough to try them all (`allocate_uniform`): for every head count (whole attention modules, h =
0, included), the widest FFN (whole FFN modules, w = 0, included) that meets the budget; the one
whose summed loss is smallest wins. A one-step search cannot see past a plateau of the table
(on AMX at batch 1, attention at 5-7 heads costs the same as at 8: removing one head saves
nothing, three save a step), so it thins the FFN instead; trying every head count sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Curve:
    order: list[int]  # structure indices, first removed first (already-removed ones lead)
    loss: list[float]  # loss[k]: removing order[:k]; loss[0] = 0, non-decreasing
    removed: int  # how many are removed already (they stay removed)


def _step(size: int) -> int:
    return max(1, round(size / 64))  # FFN neurons go in chunks (~64 chunks a layer)


def allocate_uniform(attn: list[Curve], ffn: list[Curve], table, budget: float,
                     at_least: tuple[int, int] = (0, 0)) -> dict[str, list[int]]:
    """The uniform widths (h heads, w FFN neurons in every layer; w in steps of `_step`, or 0)
    that meet `table.relative <= budget` at the least summed loss, keeping at least `at_least`
    (heads, FFN width: the widths the final target is headed for); structures already removed
    stay removed. Raises UserError when even removing everything misses it."""
    H, W, L = table.heads, len(ffn[0].order), len(attn)
    h_top = H - max(c.removed for c in attn)
    w_top = W - max(c.removed for c in ffn)
    chunk = _step(W)
    widths = sorted({max(0, w_top - k * chunk) for k in range(w_top // chunk + 2)}, reverse=True)
    best = None
    for h in range(h_top, min(at_least[0], h_top) - 1, -1):
        for w in (x for x in widths if x >= min(at_least[1], w_top)):  # the widest FFN that meets the budget
            if table.relative({"heads": [h] * L, "ffn": [w] * L}) <= budget + 1e-12:
                loss = sum(c.loss[H - h] for c in attn) + sum(c.loss[W - w] for c in ffn)
                if best is None or loss < best[0] - 1e-12:
                    best = (loss, h, w)
                break
    if best is None:
        raise UserError(
            f"speedup {1 / budget:.3g}x cannot be reached on {table.runtime} without removing every structure "
            f"(at most {table.max_speedup():.2f}x)"
        )
    _, h, w = best
    return {"attn": [H - h] * L, "ffn": [W - w] * L}


def allocate(attn: list[Curve], ffn: list[Curve], table, budget: float, uniform: bool = False) -> dict[str, list[int]]:
    """How many structures each module removes (per layer: {"attn": [...], "ffn": [...]}) so that
    `table.relative(widths) <= budget`. Raises UserError when even removing everything misses it."""
    if uniform:
        return allocate_uniform(attn, ffn, table, budget)
    H, W, L = table.heads, len(ffn[0].order), len(attn)
    r = {"attn": [c.removed for c in attn], "ffn": [c.removed for c in ffn]}
    if uniform:  # the widest removal so far, everywhere
        r = {k: [max(v)] * L for k, v in r.items()}
    curves = {"attn": attn, "ffn": ffn}
    size = {"attn": H, "ffn": W}
    chunk = {"attn": 1, "ffn": _step(W)}

    def widths(rem):
        return {"heads": [H - x for x in rem["attn"]], "ffn": [W - x for x in rem["ffn"]]}

    cost = table.relative(widths(r))
    while cost > budget + 1e-12:
        best = None
        groups = [[(kind, layer) for layer in range(L)] for kind in curves] if uniform else [
            [(kind, layer)] for kind in curves for layer in range(L)
        ]
        for group in groups:
            kind = group[0][0]
            if r[kind][group[0][1]] >= size[kind]:
                continue
            trial = {k: list(v) for k, v in r.items()}
            loss = 0.0
            for _, layer in group:
                c = curves[kind][layer]
                new = min(size[kind], r[kind][layer] + chunk[kind])
                loss += c.loss[new] - c.loss[r[kind][layer]]
                trial[kind][layer] = new
            saved = cost - table.relative(widths(trial))
            score = loss / max(saved, 1e-9)
            if best is None or score < best[0]:
                best = (score, trial)
        if best is None:
            raise UserError(
                f"speedup {1 / budget:.3g}x cannot be reached on {table.runtime} without removing every structure "
                f"(at most {table.max_speedup():.2f}x)"
            )
        r = best[1]
        cost = table.relative(widths(r))
    return r
