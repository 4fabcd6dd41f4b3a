"""Recovery on the compact model: after the final pruning event of a structured run the masked
model is made compact (its removed heads and FFN neurons gone, `pruning.structures.compact`)
with its AdamW state carried over, so the rest of recovery trains the smaller model.

The two compute the same function and get the same gradients (a removed structure's weights
are zero under their masks and its biases get no gradient), so the compact model takes the
steps the masked one would have taken, at the compact model's cost. The time saved is spent
on more recovery at the final width: both models' step cost is measured on the batch at hand
(a few forward+backward passes each, on rank 0, shared with every rank), and the remaining
steps grow by `reuse` × (masked / compact − 1), at most `max_extra` × the remaining steps.
The learning rate's last segment stretches over the longer recovery.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import VerificationError


@dataclass
class Compaction:
    at_step: int  # the final pruning event's step: compacted right after it is applied
    kept_of: Callable[[dict], dict]  # prunable modules (masks attached) -> the kept heads / FFN neurons
    check: Callable[[dict, dict], None] = lambda modules, masks: None  # raises when the masks are not whole structures
    reuse: float = 1.0  # share of the saved time spent on more steps (0: the same steps, just cheaper)
    max_extra: float = 1.0  # at most this × the remaining steps added
    probe_passes: int = 3  # forward+backward passes timed per model
    clock: Callable[[], float] = time.perf_counter
    # what happened, filled when it happens (the prune record's `compaction`)
    kept: dict | None = None
    masks: dict | None = None
    info: dict = field(default_factory=dict)

    def extra_steps(self, remaining: int, masked_s: float, compact_s: float) -> int:
        gain = max(0.0, masked_s / max(compact_s, 1e-12) - 1.0)
        return int(min(self.max_extra * remaining, round(self.reuse * gain * remaining)))


def stretch(lr_at: Callable[[float], float], at: int, old_total: int, new_total: int) -> Callable[[float], float]:
    """`lr_at` with its segment from step `at` stretched from ending at old_total to new_total."""
    if new_total == old_total:
        return lr_at
    ratio = (old_total - at) / max(1, new_total - at)
    return lambda step: lr_at(step if step < at else at + (step - at) * ratio)


def step_cost(model, batch: dict, loss_of: Callable, passes: int, clock) -> float:
    """Seconds of one forward+backward of `model` on `batch` (the mean of `passes` after one
    untimed); the gradients are discarded."""
    loss_of(model, batch).backward()
    model.zero_grad(set_to_none=True)
    start = clock()
    for _ in range(passes):
        loss_of(model, batch).backward()
    spent = (clock() - start) / max(1, passes)
    model.zero_grad(set_to_none=True)
    return spent


@torch.no_grad()
def moments_after(model, kept: dict, opt: torch.optim.Optimizer) -> dict[str, dict]:
    """The optimizer's per-parameter state, by the compact model's parameter names: each state
    tensor is cut by the same compaction as its parameter (a copy of the model holding the
    state tensors in place of the weights, compacted)."""
    from ..pruning import masks as M
    from ..pruning.structures import compact

    names = {p: n for n, p in model.named_parameters()}
    states = {names[p]: s for p, s in opt.state.items() if p in names}
    if not states:
        return {}
    out: dict[str, dict] = {}
    keys = [k for k, v in next(iter(states.values())).items() if torch.is_tensor(v) and v.dim() > 0]
    for key in keys:
        twin = copy.deepcopy(model)
        for n, p in twin.named_parameters():
            if n in states:
                p.data = states[n][key].detach().clone()
        for module in twin.modules():
            module._buffers.pop(M.MASK, None)
        compact(twin, kept)
        for n, p in twin.named_parameters():
            out.setdefault(n, {})[key] = p.data
    scalar = {k: v for k, v in next(iter(states.values())).items() if k not in keys}  # e.g. AdamW's step
    for n in out:
        out[n].update({k: (v.clone() if torch.is_tensor(v) else v) for k, v in scalar.items()})
    return out


@torch.no_grad()
def make_compact(model, modules: dict, kept: dict) -> None:
    """In place: the masks' buffers removed and the removed structures cut out."""
    from ..pruning import masks as M
    from ..pruning.structures import compact

    for module in modules.values():
        module._buffers.pop(M.MASK, None)
    compact(model, kept)


def compact_in_training(comp: Compaction, model, modules: dict, opt, make_opt, batch: dict, loss_of,
                        remaining: int, share) -> tuple[torch.optim.Optimizer, int]:
    """Compact `model` now (the final masks applied), carry the optimizer over, measure both
    models' step cost and return (the new optimizer, the extra steps); `share(x)` is rank 0's
    value of x on every rank."""
    from ..pruning import masks as M

    comp.masks = {k: v.clone() for k, v in M.get_masks(modules).items()}
    comp.check(modules, comp.masks)
    comp.kept = comp.kept_of(modules)
    model.eval()
    with torch.no_grad():
        reference = loss_of(model, batch, logits=True)
    model.train()
    masked_s = step_cost(model, batch, loss_of, comp.probe_passes, comp.clock)
    moments = moments_after(model, comp.kept, opt)
    make_compact(model, modules, comp.kept)
    model.eval()
    with torch.no_grad():
        diff = float((loss_of(model, batch, logits=True) - reference).abs().max())
    model.train()
    if not diff <= 1e-3 * max(1.0, float(reference.abs().max())):
        raise VerificationError(f"prune: the compact model's outputs differ from the masked one's by {diff:.2e}")
    compact_s = step_cost(model, batch, loss_of, comp.probe_passes, comp.clock)
    masked_s, compact_s = share(masked_s), share(compact_s)
    new_opt = make_opt(model)
    for n, p in model.named_parameters():
        if n in moments:
            new_opt.state[p] = moments[n]
    extra = comp.extra_steps(remaining, masked_s, compact_s)
    comp.info = {"step": comp.at_step, "masked_step_s": round(masked_s, 5), "compact_step_s": round(compact_s, 5),
                 "step_cost_ratio": round(masked_s / max(compact_s, 1e-12), 4), "remaining_steps": remaining,
                 "extra_steps": extra, "max_abs_diff": diff}
    return new_opt, extra
