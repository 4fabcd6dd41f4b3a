"""Structured pruning to a latency target: criteria for heads and FFN neurons, and the step.

At a pruning event the target is a fraction of the dense model's time (the schedule's
"sparsity" s is the fraction of time removed: s = 1 - 1/speedup at the end). A criterion gives
every module (one layer's attention, one layer's FFN) a removal order and the cumulative loss
of removing its first k structures; `allocation.allocate` chooses how many each removes under
the latency table's budget; the masks then remove them (the rows and columns of each head and
neuron: `structures.Structure.masks_for`).

Criteria:
- magnitude (the GMP analogue): the squared norm of a head's or neuron's columns of its output
  projection (through which it reaches the residual stream), ranked globally as GMP ranks |w|;
- second-order (ZipLM, OBS with the layer-input Hessian H = XᵀX of the output projection's
  inputs on calibration data): removing the input columns M of W costs
  ρ_M = tr(W_M ((H⁻¹)_MM)⁻¹ W_Mᵀ) (squared output error, comparable across modules); the removal
  is greedy (a head, or a chunk of neurons, at a time, H⁻¹ and W updated after each) and the
  kept columns get the optimal update W ← W − W_M ((H⁻¹)_MM)⁻¹ (H⁻¹)_M,: .
"""

from __future__ import annotations

import json

import torch

from ..errors import UserError
from ..progress import log
from . import masks as M
from .allocation import Curve, _step, allocate, allocate_uniform
from .latency_loop import close_loop
from .structures import Structure, counts


def _curve(scores: list[float], removed: set[int]) -> Curve:
    order = sorted(range(len(scores)), key=lambda j: (j not in removed, scores[j]))
    loss = [0.0]
    for j in order:
        loss.append(loss[-1] + (0.0 if j in removed else float(scores[j])))
    return Curve(order, loss, len(removed))


def magnitude_curves(structure: Structure, modules: dict) -> tuple[list[Curve], list[Curve]]:
    kept = structure.kept(modules)
    attn, ffn = [], []
    for layer, heads, neurons in zip(structure.layers, kept["heads"], kept["ffn"]):
        wo = modules[layer.names["o"]].weight.detach().float()
        per_head = wo.pow(2).sum(0).reshape(layer.heads, layer.head_dim).sum(-1)
        attn.append(_curve(per_head.tolist(), set(range(layer.heads)) - set(heads)))
        wf = modules[layer.names["f"]].weight.detach().float()
        per_neuron = wf.pow(2).sum(0)
        ffn.append(_curve(per_neuron.tolist(), set(range(layer.ffn)) - set(neurons)))
    return attn, ffn


def _inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    H = H.double()
    d = damp * H.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for _ in range(6):  # more dampening until it factors
        L, info = torch.linalg.cholesky_ex(H + d * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(L)
        d *= 10
    return torch.linalg.pinv(H + d * eye)


def obs_curve(W: torch.Tensor, Hinv: torch.Tensor, group: int, removed: set[int]) -> Curve:
    """Greedy OBS removal of W's input columns in groups of `group` (a head) or, with group 1,
    in chunks of neurons; the loss is the increase of the layer's squared output error (both
    output projections write into the same residual stream, so the units compare)."""
    W, Hinv = W.double().clone(), Hinv.clone()
    n = W.shape[1] // group
    cols = lambda gs: torch.cat([torch.arange(g * group, (g + 1) * group) for g in gs])  # noqa: E731
    order = sorted(removed)
    loss = [0.0] * (len(order) + 1)
    left = [g for g in range(n) if g not in removed]
    chunk = 1 if group > 1 else _step(n)
    if order:  # what is gone already is gone: its columns are zero, the update only moves H⁻¹
        idx = cols(order)
        Hinv = Hinv - Hinv[:, idx] @ torch.linalg.solve(Hinv[idx][:, idx], Hinv[idx, :])
    while left:
        if group == 1:
            d = Hinv.diagonal()[left].clamp_min(1e-12)
            score = W[:, left].pow(2).sum(0) / d
            pick = [left[i] for i in torch.argsort(score)[:chunk].tolist()]
        else:
            score = []
            for g in left:
                idx = cols([g])
                Wm = W[:, idx]
                score.append(float(torch.einsum("oi,ij,oj->", Wm, torch.linalg.inv(Hinv[idx][:, idx]), Wm)))
            pick = [left[min(range(len(left)), key=score.__getitem__)]]
        idx = cols(pick)
        inv_mm = torch.linalg.inv(Hinv[idx][:, idx])
        rho = float(torch.einsum("oi,ij,oj->", W[:, idx], inv_mm, W[:, idx]))
        W = W - W[:, idx] @ inv_mm @ Hinv[idx, :]
        W[:, idx] = 0
        Hinv = Hinv - Hinv[:, idx] @ inv_mm @ Hinv[idx, :]
        for k, g in enumerate(pick):  # a chunk's loss, spread over its neurons
            order.append(g)
            loss.append(loss[-1] + rho / len(pick))
        left = [g for g in left if g not in pick]
    return Curve(order, loss, len(removed))


@torch.no_grad()
def obs_update(W: torch.Tensor, Hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The kept columns' optimal update for removing `cols` at once (exact for the whole set)."""
    W64 = W.double()
    inv_mm = torch.linalg.inv(Hinv[cols][:, cols])
    W64 = W64 - W64[:, cols] @ inv_mm @ Hinv[cols, :]
    W64[:, cols] = 0
    return W64.to(W.dtype)


def _scaled(curve: Curve, unit: float) -> Curve:
    return Curve(curve.order, [x * unit for x in curve.loss], curve.removed)


# A member's latency loop runs mid-schedule, on a model still far from its final weights: at most
# this many measured shapes (squad 1.5x on the 2-core Zen 3: 8 rounds and their re-timings took
# 15 minutes of a 60-minute run); the bench times what the member ships all the same.
MEMBER_LOOP_ROUNDS = 4


class StructuredPruner:
    """The structured prune step for a latency table and a criterion ("magnitude" or "obs").

    With a `timer` (`latency_table.ShapeTimer`, on rank 0), the final event's widths go through
    the latency loop (`latency_loop.close_loop`): measured on the target runtime until they meet
    the target at every shape; `prepare` runs the same loop before training, on the untrained
    model's curves, so every event's budget is met on a table corrected by measurement."""

    def __init__(self, criterion: str, structure: Structure, latency, uniform: bool = False,
                 hessians=None, damp: float = 0.01, timer=None, final_sparsity: float | None = None,
                 norms: dict | None = None, rungs: dict[str, float] | None = None, snapshot=None):
        if latency is None or structure is None:
            raise ValueError("structured pruning needs a structure and a latency table")
        self.criterion, self.structure, self.table, self.uniform = criterion, structure, latency, uniform
        self.hessians, self.damp = hessians, damp
        self.timer, self.final_sparsity = timer, final_sparsity
        self.norms = norms  # LayerNorm name -> module: OBS losses in one unit (see `_unit`)
        self.history: list[dict] = []
        self.loops: dict[str, dict] = {}  # "before_training" / "final" / "member_1.5x": the latency loop's record
        # the family's rungs below the final target (name -> fraction of time removed at its event),
        # `snapshot(name)` keeps a member as the schedule left it: called at the event after its own
        self.rungs, self.snapshot = rungs or {}, snapshot
        self.members: dict[str, dict] = {}  # name -> target, widths, prediction (the prune record's)
        self.pending: str | None = None  # the member whose snapshot the next event takes

    def state_dict(self) -> dict:
        """The table as the latency loop corrected it, its records and the history (checkpointed)."""
        return {"table": self.table.to_dict(), "loops": json.dumps(self.loops), "history": json.dumps(self.history),
                "members": json.dumps({"members": self.members, "pending": self.pending})}

    def load_state_dict(self, state: dict) -> None:
        self.table = type(self.table).from_dict(state["table"])
        self.loops, self.history = json.loads(state["loops"]), json.loads(state["history"])
        family = json.loads(state.get("members") or '{"members": {}, "pending": null}')
        self.members, self.pending = family["members"], family["pending"]

    def _curves(self, modules: dict):
        st, inv = self.structure, None
        if self.criterion == "obs":
            names = [n for layer in st.layers for n in (layer.names["o"], layer.names["f"])]
            ln = st.norm_names()
            got = self.hessians(names + ([ln[n] for n in names] if self.norms else []))
            H = {n: got[n].to(modules[n].weight.device) for n in names}
            inv = {n: _inverse(H[n], self.damp) for n in names}
            unit = {n: self._unit(got[ln[n]], self.norms[ln[n]]) if self.norms else 1.0 for n in names}
            kept = st.kept(modules)
            attn, ffn = [], []
            for layer, heads, neurons in zip(st.layers, kept["heads"], kept["ffn"]):
                o, f = layer.names["o"], layer.names["f"]
                attn.append(_scaled(obs_curve(modules[o].weight.detach(), inv[o], layer.head_dim,
                                              set(range(layer.heads)) - set(heads)), unit[o]))
                ffn.append(_scaled(obs_curve(modules[f].weight.detach(), inv[f], 1,
                                             set(range(layer.ffn)) - set(neurons)), unit[f]))
        else:
            attn, ffn = magnitude_curves(st, modules)
        return attn, ffn, inv

    @staticmethod
    def _unit(variance: torch.Tensor, norm) -> float:
        """An error d added to a LayerNorm's input z reaches its output as about γ·d/σ(z): the
        squared error in the next layer's units is |d|² · mean(γ²) / var(z)."""
        gain = float(norm.weight.detach().double().pow(2).mean()) if getattr(norm, "weight", None) is not None else 1.0
        return gain / max(float(variance), 1e-12)

    def _search(self, attn, ffn, budget: float, at_least: tuple[int, int] | None = None):
        st = self.structure

        def search(table):
            removed = (allocate_uniform(attn, ffn, table, budget, at_least or (0, 0)) if self.uniform
                       else allocate(attn, ffn, table, budget))
            counts = {"heads": [layer.heads - r for layer, r in zip(st.layers, removed["attn"])],
                      "ffn": [layer.ffn - r for layer, r in zip(st.layers, removed["ffn"])]}
            loss = sum(c.loss[r] for c, r in zip(attn, removed["attn"])) + sum(
                c.loss[r] for c, r in zip(ffn, removed["ffn"]))
            return removed, counts, loss

        return search

    def _towards_final(self, attn, ffn) -> tuple[int, int]:
        """Uniform widths: the heads and FFN width the final target picks on today's curves (an
        event on the way never removes past them: what is removed now cannot come back)."""
        st = self.structure
        try:
            final = allocate_uniform(attn, ffn, self.table, 1.0 - self.final_sparsity)
            return st.layers[0].heads - final["attn"][0], st.layers[0].ffn - final["ffn"][0]
        except UserError:  # out of reach from here on this table: the event alone decides
            return 0, 0

    def _loop(self, attn, ffn, budget: float, name: str, at_least: tuple[int, int] | None = None):
        rounds = MEMBER_LOOP_ROUNDS if name.startswith("member_") else 8
        res = close_loop(self._search(attn, ffn, budget, at_least), self.table, self.timer, 1.0 / budget,
                         max_rounds=rounds, label=f" ({name.replace('_', ' ')})")
        self.table = res.table
        self.loops[name] = res.record(round(1.0 / budget, 4), self.table.shapes)
        return res

    @torch.no_grad()
    def prepare(self, modules: dict) -> None:
        """Before training: the latency loop on the untrained model's curves at the final target
        (no mask or weight changes; the table is corrected for every event that follows)."""
        if self.timer is None or self.final_sparsity is None:
            return
        attn, ffn, _ = self._curves(modules)
        self._loop(attn, ffn, 1.0 - self.final_sparsity, "before_training")

    @torch.no_grad()
    def prune_step(self, modules: dict, sparsity: float) -> None:
        budget = 1.0 - sparsity
        st = self.structure
        if self.pending is not None and self.snapshot is not None:  # the member before this event removes more
            self.snapshot(self.pending)
            self.pending = None
        attn, ffn, inv = self._curves(modules)
        final = self.final_sparsity is not None and abs(sparsity - self.final_sparsity) < 1e-9
        rung = None if final else next((n for n, s in self.rungs.items() if abs(s - sparsity) < 1e-9), None)
        on_the_way = self.uniform and self.final_sparsity is not None and not final
        at_least = self._towards_final(attn, ffn) if on_the_way else None
        if self.timer is not None and (final or rung):  # a member's widths are measured, like the final ones
            res = self._loop(attn, ffn, budget, "final" if final else f"member_{rung}", at_least)
            removed = res.chosen.removal if res.chosen else self._search(attn, ffn, budget, at_least)(self.table)[0]
        elif on_the_way:
            removed = allocate_uniform(attn, ffn, self.table, budget, at_least)
        else:
            removed = allocate(attn, ffn, self.table, budget, self.uniform)
        before = st.kept(modules)
        kept = {
            "heads": [sorted(c.order[r:]) for c, r in zip(attn, removed["attn"])],
            "ffn": [sorted(c.order[r:]) for c, r in zip(ffn, removed["ffn"])],
        }
        if self.criterion == "obs":  # the kept columns absorb what the removed ones did
            for layer, was_h, now_h, was_f, now_f in zip(st.layers, before["heads"], kept["heads"], before["ffn"],
                                                         kept["ffn"]):
                o, f = layer.names["o"], layer.names["f"]
                gone = sorted(set(range(layer.heads)) - set(now_h))
                if set(was_h) != set(now_h):
                    idx = torch.cat([torch.arange(h * layer.head_dim, (h + 1) * layer.head_dim) for h in gone])
                    modules[o].weight.copy_(obs_update(modules[o].weight, inv[o], idx.to(modules[o].weight.device)))
                if set(was_f) != set(now_f):
                    idx = torch.tensor(sorted(set(range(layer.ffn)) - set(now_f)), device=modules[f].weight.device)
                    modules[f].weight.copy_(obs_update(modules[f].weight, inv[f], idx))
        M.set_masks(modules, st.masks_for(modules, kept))
        c = counts(kept)
        predicted = self.table.relative(c)
        self.history.append({"target_speedup": round(1 / budget, 4), "predicted_speedup": round(1 / predicted, 4), **c})
        if rung:
            self.members[rung] = {"target_speedup": round(1 / budget, 4), "predicted_speedup": round(1 / predicted, 4),
                                  "widths": c, "latency_loop": self.loops.get(f"member_{rung}")}
            self.pending = rung
        log(f"[dim]structured → {1 / budget:.2f}x (predicted {1 / predicted:.2f}x on {self.table.runtime}): "
            f"heads {c['heads']}, FFN {c['ffn']}[/dim]")


class StructuredMethod:
    """What a method with a structured branch hands the prune stage from its `structured` pruner
    (None: the method is pruning unstructured): the history, `prepare`, the checkpointed state."""

    structured: StructuredPruner | None = None

    @property
    def history(self) -> list[dict]:
        return self.structured.history if self.structured is not None else []

    def prepare(self, modules: dict) -> None:
        if self.structured is not None:
            self.structured.prepare(modules)

    def state_dict(self) -> dict | None:
        return self.structured.state_dict() if self.structured is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.structured is not None and state:
            self.structured.load_state_dict(state)
