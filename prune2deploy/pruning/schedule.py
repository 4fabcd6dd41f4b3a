"""Sparsity and learning-rate schedules, in optimizer steps, derived from a PruneConfig.

Cubic sparsity (Zhu & Gupta; GMP*, oBERT): a first step to `init_sparsity` (scaled down
for targets below `reference_sparsity`) at `prune_start`, then
s(t) = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3 at every `prune_freq` up to
`prune_end`; the rest fine-tunes at the target. All times scale with the target sparsity
(guideline 2). The learning rate decays linearly from `lr` to `lr_min`
and, with `lr_rewind`, rewinds at every pruning step (cyclic linear, as in the oBERT recipe).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    total_steps: int
    prune_steps: tuple[tuple[int, float], ...]  # (optimizer step, sparsity to reach there)
    lr: float
    lr_min: float
    lr_rewind: bool

    def lr_at(self, step: int) -> float:
        bounds = [0] + ([s for s, _ in self.prune_steps] if self.lr_rewind else []) + [self.total_steps]
        for a, b in zip(bounds, bounds[1:]):
            if a <= step < b:
                return self.lr + (self.lr_min - self.lr) * (step - a) / max(1, b - a)
        return self.lr_min


def cubic(t: float, t0: float, t1: float, s_i: float, s_f: float) -> float:
    if t1 <= t0 or t >= t1:
        return s_f
    if t <= t0:
        return s_i
    return s_f + (s_i - s_f) * (1.0 - (t - t0) / (t1 - t0)) ** 3


def first_step(p) -> float:
    """Sparsity of the first pruning step: `init_sparsity` at the reference target and above,
    the same share of the target below it (0.7 of 0.9 -> 0.54 of 0.7), so a lower target is
    still reached gradually instead of in one shot. (One-shot is prune_start == prune_end.)"""
    ref = max(p.reference_sparsity, 1e-6)
    return min(p.init_sparsity * min(1.0, p.target_sparsity / ref), p.target_sparsity)


def make_plan(prune_cfg, scale: float, steps_per_epoch: int) -> Plan:
    p = prune_cfg
    total = max(1, round(p.epochs * scale * steps_per_epoch))
    target = p.target_sparsity
    events: list[tuple[int, float]] = []
    if target > 0:
        t0, t1, freq = p.prune_start * scale, p.prune_end * scale, p.prune_freq * scale
        s_i = first_step(p)
        times = []
        t = t0
        while t < t1 - 1e-9:
            times.append(t)
            t += freq
        times.append(t1)
        for t in times:
            step = min(total - 1, round(t * steps_per_epoch))
            s = cubic(t, t0, t1, s_i, target)
            if events and events[-1][0] == step:
                events[-1] = (step, s)  # two events on one step: the later wins
            else:
                events.append((step, s))
        events[-1] = (events[-1][0], target)
    return Plan(total_steps=total, prune_steps=tuple(events), lr=p.lr, lr_min=p.lr_min, lr_rewind=p.lr_rewind)
