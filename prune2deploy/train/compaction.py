"""Recovery on the compact model: after the final pruning event of a structured run the masked
model is made compact (its removed heads and FFN neurons gone, `pruning.structures.compact`)
with its AdamW state carried over, so the rest of recovery trains the smaller model.

The two compute the same function and get the same gradients (a removed structure's weights
are zero under their masks and its biases get no gradient), so the compact model takes the
steps the masked one would have taken, at the compact model's cost. The time saved is spent
on more recovery at the final width: the wall time of whole training steps (teacher, loss,
backward, optimizer) per padded token (batches differ in length) is measured over the last
`probe_steps` masked steps and the first `probe_steps` compact ones (after one to warm up), on
rank 0 and shared with every rank, and the remaining steps grow by `reuse` × (masked / compact −
1), at most `max_extra` × the remaining steps; the learning rate's last segment stretches over
them. The number of steps therefore depends on the machine (the record says what was measured);
`reuse` 0 keeps the plan's steps.
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
    reuse: float = 1.0  # share of the saved time spent on more steps (0: the plan's steps, just cheaper)
    max_extra: float = 1.0  # at most this × the remaining steps added
    probe_steps: int = 10  # training steps timed on each side of the compaction
    clock: Callable[[], float] = time.perf_counter
    # what happened, filled as it happens (the prune record's `compaction`)
    kept: dict | None = None
    masks: dict | None = None
    info: dict = field(default_factory=dict)
    masked_times: list[float] = field(default_factory=list)
    compact_times: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """The model has been made compact."""
        return self.kept is not None

    @property
    def decided(self) -> bool:
        return "extra_steps" in self.info

    def timed(self, seconds: float, step: int, tokens: int) -> None:
        """One training step's wall time over its padded tokens (step: the step it was)."""
        per_token = seconds / max(1, tokens)
        if not self.done and step < self.at_step:
            self.masked_times = (self.masked_times + [per_token])[-self.probe_steps:]
        elif self.done and step > self.at_step and not self.decided:  # the first compact step warms up
            self.compact_times.append(per_token)

    def ready(self) -> bool:
        """Enough compact steps timed to decide the extra steps."""
        return self.done and not self.decided and len(self.compact_times) >= self.probe_steps

    def decide(self, remaining: int, masked_s: float, compact_s: float) -> int:
        """The extra steps, from the two costs per token (rank 0's); recorded in `info`."""
        gain = max(0.0, masked_s / max(compact_s, 1e-12) - 1.0) if masked_s > 0 else 0.0
        extra = int(min(self.max_extra * remaining, round(self.reuse * gain * remaining)))
        self.info.update(masked_ms_per_ktoken=round(masked_s * 1e6, 4),
                         compact_ms_per_ktoken=round(compact_s * 1e6, 4),
                         step_cost_ratio=round(masked_s / max(compact_s, 1e-12), 4), remaining_steps=remaining,
                         extra_steps=extra)
        return extra


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def stretch(lr_at: Callable[[float], float], at: int, old_total: int, new_total: int) -> Callable[[float], float]:
    """`lr_at` with its segment from step `at` stretched from ending at old_total to new_total."""
    if new_total == old_total:
        return lr_at
    ratio = (old_total - at) / max(1, new_total - at)
    return lambda step: lr_at(step if step < at else at + (step - at) * ratio)


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
    first = next(iter(states.values()))
    keys = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
    for key in keys:
        twin = copy.deepcopy(model)
        holds = set()
        for n, p in twin.named_parameters():
            if n in states:
                p.data = states[n][key].detach().clone()
                holds.add(id(p))
        for module in twin.modules():
            module._buffers.pop(M.MASK, None)
        compact(twin, kept)
        for n, p in twin.named_parameters():
            if id(p) in holds or n in states:  # a cut parameter is new; its name is its source's
                out.setdefault(n, {})[key] = p.data
    scalar = {k: v for k, v in first.items() if k not in keys}  # e.g. AdamW's step
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


def compact_in_training(comp: Compaction, model, modules: dict, opt, make_opt, batch: dict, outputs_of,
                        agree) -> torch.optim.Optimizer:
    """Compact `model` now (the final masks applied) and return the optimizer carried over;
    `outputs_of(model, batch)` the student's outputs, flat; `agree(ok, what)` true on every rank
    when `ok` is on every rank (a failed check stops every rank together)."""
    from ..pruning import masks as M

    comp.masks = {k: v.clone() for k, v in M.get_masks(modules).items()}
    comp.check(modules, comp.masks)
    kept = comp.kept_of(modules)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reference = outputs_of(model, batch)
    moments = moments_after(model, kept, opt)
    make_compact(model, modules, kept)
    with torch.no_grad():
        diff = float((outputs_of(model, batch) - reference).abs().max())
    model.train(was_training)
    if not agree(diff <= 1e-3 * max(1.0, float(reference.abs().max())), "compaction: the same outputs"):
        raise VerificationError(f"prune: the compact model's outputs differ from the masked one's by {diff:.2e} "
                                "(on this rank or another)")
    comp.kept = kept
    new_opt = make_opt(model)
    for n, p in model.named_parameters():
        if n in moments:
            new_opt.state[p] = moments[n]
    comp.info = {"step": comp.at_step, "max_abs_diff": diff,
                 "masked_ms_per_ktoken_each": [round(t * 1e6, 4) for t in comp.masked_times]}
    return new_opt
