"""The Optimal BERT Surgeon (oBERT, Kurtic et al. 2022): second-order pruning with a
block-diagonal empirical Fisher.

For every block of B consecutive weights of each prunable tensor we need the inverse of
    F = lambda * I + (1/m) * sum_i g_i g_i^T          (never a d x d matrix: memory d * B).
The paper builds it by m Sherman-Morrison rank-one updates from F^-1 = I / lambda
(`rank_one_update_`, kept as the reference the tests hold this to). On a CPU that chain is
memory-bound: each update reads and writes the whole d x B inverse (2 GB for MiniLM-L6's
encoder at B = 50), 1.6 s per gradient here. We accumulate F instead, k gradients per
batched matmul (`accumulate_`, no cancellation: a sum of PSD terms, float32), and invert it
once per block in float64 (`invert_`, by Cholesky): the same matrix (tested against the rank-one chain
and a direct inverse), with a cost that no longer grows with m (about 14 s for MiniLM-L6,
whatever m; the paper's m = 1024 would cost 1,600 s per pruning step the other way).
Saliency of weight q: w_q^2 / (2 [F^-1]_qq). After the global or per-layer
selection, the surviving weights of each block get the OBS update for the set Q of pruned
weights in it:  dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q,  then the masks are applied.

With `gradients: training` the Fisher is summed from the training steps' own gradients (after
masking, before clipping) between pruning steps, the last `num_grads` of them before each
one (`observe`): no extra forward/backward passes, at the price of gradients taken on weights
a few dozen steps old and with dropout on. A step with fewer than num_grads / 2 such gradients
behind it (the first, at step 0) draws fresh ones, as does a model whose inverse Fisher does
not fit one chunk.

Gradients come from `ctx["gradients"](names)`: an iterable of {name: grad} dicts, one per
mini-batch gradient (m of them; with several processes each rank yields its share and
`ctx["sum_across_ranks"]` all-reduces the Fisher sums, so every rank inverts the same F).
Layers are processed in chunks that fit `chunk_bytes`; with more than one chunk the
gradients are computed again for each chunk (time for memory), from the same weights: no
update is applied before every chunk's update is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from typing import Callable, Iterable

import torch

from ..errors import UserError
from . import masks as M


def blocks_of(t: torch.Tensor, block: int) -> torch.Tensor:
    """Flatten and zero-pad to a multiple of `block`: shape (n_blocks, block)."""
    flat = t.detach().reshape(-1).float()
    pad = (-flat.numel()) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block)


def fisher_inverse(
    grads: Iterable[torch.Tensor], n_blocks: int, block: int, damp: float, m: int, device=None, group: int = 32
) -> torch.Tensor:
    """Block-diagonal inverse empirical Fisher from m gradients ((n_blocks, block) tensors)."""
    fs = {"w": init_fisher(n_blocks, block, damp, device)}
    accumulate_stream_(fs, ({"w": g} for g in grads), m, group)
    return invert_(fs["w"])


def accumulate_stream_(
    fs: dict[str, torch.Tensor], grads: Iterable[dict[str, torch.Tensor]], m: int, group: int
) -> int:
    """F += g g^T / m for every tensor of `fs`, from a stream of {name: (n_blocks, B)} gradients,
    `group` gradients per batched matmul. Returns how many gradients the stream gave."""
    pending: dict[str, list[torch.Tensor]] = {n: [] for n in fs}

    def flush():
        for n, gs in pending.items():
            if gs:
                accumulate_(fs[n], torch.stack(gs, -1), m)
                gs.clear()

    count = 0
    for g in grads:
        count += 1
        for n in fs:
            pending[n].append(g[n])
        if count % group == 0:
            flush()
    flush()
    return count


def init_fisher(n_blocks: int, block: int, damp: float, device=None) -> torch.Tensor:
    return torch.eye(block, device=device).repeat(n_blocks, 1, 1) * damp


def accumulate_(f: torch.Tensor, g: torch.Tensor, m: int) -> None:
    """In place: F += G G^T / m per block; G is (n_blocks, B, k), k gradients at once."""
    g = g.to(f.device, torch.float32)
    f.baddbmm_(g, g.transpose(1, 2), alpha=1.0 / m)


def invert_(f: torch.Tensor, rows: int = 16384) -> torch.Tensor:
    """In place, per block: F <- F^-1, computed in float64 on slices of `rows` blocks: by
    Cholesky (F is damp * I + a sum of g g^T, positive definite; 1.4x faster than a general
    inverse on a CPU), a block whose factorisation fails by a general inverse."""
    for i in range(0, f.shape[0], rows):
        x = f[i : i + rows].double()
        lower, info = torch.linalg.cholesky_ex(x)
        inv = torch.cholesky_inverse(lower)
        failed = info != 0
        if failed.any():
            inv[failed] = torch.linalg.inv(x[failed])
        f[i : i + rows] = inv.to(f.dtype)
    return f


def init_inverse(n_blocks: int, block: int, damp: float, device=None) -> torch.Tensor:
    return torch.eye(block, device=device).repeat(n_blocks, 1, 1) / damp


def rank_one_update_(finv: torch.Tensor, g: torch.Tensor, m: int) -> None:
    """In place: F^-1 <- (F + g g^T / m)^-1 for each block; g is (n_blocks, B)."""
    g = g.to(finv.device, torch.float32)
    fg = torch.bmm(finv, g.unsqueeze(-1)).squeeze(-1)  # (n, B)
    denom = m + (g * fg).sum(-1)  # (n,)
    finv.sub_(torch.einsum("ni,nj->nij", fg, fg) / denom.view(-1, 1, 1))


def saliency(w_blocks: torch.Tensor, finv: torch.Tensor) -> torch.Tensor:
    return w_blocks.pow(2) / (2.0 * torch.diagonal(finv, dim1=-2, dim2=-1))


def group_saliency(w_blocks: torch.Tensor, finv: torch.Tensor, k: int) -> torch.Tensor:
    """Joint saliency of each group Q of K consecutive weights in a block, 1/2 w_Q^T ([F^-1]_QQ)^-1 w_Q:
    the loss increase of removing the K weights together with the OBS update (block-4, the
    oBERT paper's structured variant). Returns (n_blocks, B / K)."""
    n, b = w_blocks.shape
    g = b // k
    idx = torch.arange(g, device=finv.device)
    sub = finv.reshape(n, g, k, g, k)[:, idx, :, idx, :].permute(1, 0, 2, 3)  # (n, g, K, K): the diagonal K x K blocks
    w = w_blocks.reshape(n, g, k, 1).to(finv.dtype)
    x = torch.linalg.solve(sub.double(), w.double())
    return 0.5 * (w.double().transpose(-1, -2) @ x).reshape(n, g).to(w_blocks.dtype)


def obs_update(w_blocks: torch.Tensor, finv: torch.Tensor, pruned: torch.Tensor, rows: int = 16384) -> torch.Tensor:
    """dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q per block, Q = `pruned` (bool, (n, B)).

    Batched over blocks with a varying Q: A = [F^-1]_QQ on Q x Q and the identity elsewhere,
    rhs = w on Q and 0 elsewhere, so x = A^-1 rhs vanishes off Q and dw = -F^-1 x. Slices of
    `rows` blocks keep the B x B temporaries small.
    """
    out = torch.empty_like(w_blocks)
    eye = torch.eye(w_blocks.shape[1], device=w_blocks.device)
    for i in range(0, w_blocks.shape[0], rows):
        f, q = finv[i : i + rows], pruned[i : i + rows].float()
        a = f * (q.unsqueeze(-1) * q.unsqueeze(-2)) + eye * (1.0 - q).unsqueeze(-1)
        x = torch.linalg.solve(a, (w_blocks[i : i + rows] * q).unsqueeze(-1))
        out[i : i + rows] = -torch.bmm(f, x).squeeze(-1)
    return out


def _chunks(modules: dict, block: int, chunk_bytes: int) -> list[list[str]]:
    out, cur, size = [], [], 0
    for name, mod in modules.items():
        need = (mod.weight.numel() + block) * block * 4
        if cur and size + need > chunk_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += need
    if cur:
        out.append(cur)
    return out


def check_block_pattern(block: int, pattern: str | None) -> int | None:
    """K of a blockK pattern (None otherwise); a group of K weights must lie inside one Fisher
    block, so the block size must be a multiple of K."""
    k = M.block_of(pattern)
    if k and block % k:
        raise UserError(
            f"--pattern {pattern} with oBERT needs prune.options.obert.block_size a multiple of {k}, "
            f"got {block} (e.g. {block - block % k})"
        )
    return k


def prune_step(modules, sparsity: float, scope: str, ctx) -> None:
    """Raise the masks of `modules` to `sparsity` by oBERT saliency, with the OBS weight update."""
    cfg = ctx["obert"]
    block, damp, m = cfg["block_size"], cfg["damp"], cfg["num_grads"]
    group = max(1, min(m, cfg.get("group", 32)))
    gradients: Callable[[list[str]], Iterable[dict[str, torch.Tensor]]] = ctx["gradients"]
    for name, mod in modules.items():
        if block > mod.weight.numel():
            raise UserError(f"oBERT block size {block} is larger than {name} ({mod.weight.numel()} weights)")
    k = check_block_pattern(block, ctx.get("pattern"))
    chunks = _chunks(modules, block, cfg.get("chunk_bytes", 4 << 30))
    kept: dict[str, torch.Tensor] = {}

    # data parallel (several processes): each rank streams its share of the m gradients and
    # `sum_across_ranks` adds the partial sums in place; the damping is counted on rank 0 only
    sum_across_ranks = ctx.get("sum_across_ranks")
    lead = ctx.get("rank", 0) == 0

    def finv_for(names: list[str]) -> dict[str, torch.Tensor]:
        """Stream the m gradients once, updating every tensor of the chunk."""
        if ctx.get("fisher") is not None:  # summed from the training steps (one chunk, same on every rank)
            return {n: invert_(ctx["fisher"][n]) for n in names}
        fs = {
            n: init_fisher(
                blocks_of(modules[n].weight, block).shape[0], block, damp if lead else 0.0, modules[n].weight.device
            )
            for n in names
        }
        count = accumulate_stream_(fs, ({n: blocks_of(g[n], block) for n in names} for g in gradients(names)), m, group)
        if sum_across_ranks is not None:
            for f in fs.values():
                sum_across_ranks(f)
            count = int(sum_across_ranks(torch.tensor([float(count)], device=next(iter(fs.values())).device)).item())
        if count != m:
            raise RuntimeError(f"oBERT expected {m} gradients, got {count}")
        return {n: invert_(f) for n, f in fs.items()}

    scores, groups = {}, {}
    for names in chunks:
        finvs = finv_for(names)
        for n in names:
            w = modules[n].weight
            s = saliency(blocks_of(w, block), finvs[n]).reshape(-1)[: w.numel()].view_as(w)
            scores[f"{n}.weight"] = s.to(w.device)
            if k:  # whole groups of K: their joint saliency (a group never straddles a block)
                g = group_saliency(blocks_of(w, block), finvs[n], k).reshape(-1)[: w.numel() // k]
                groups[f"{n}.weight"] = g.view(*w.shape[:-1], -1).to(w.device)
        if len(chunks) == 1:
            kept = finvs
    new = M.masks_from_scores(
        scores, M.get_masks(modules), sparsity, scope, ctx.get("pattern"), group_scores=groups or None
    )
    # every chunk's update comes from the same weights (and so the same gradients and Fisher
    # it was scored with): all updates are computed first, then applied
    updates: dict[str, torch.Tensor] = {}
    for names in chunks:
        finvs = kept if len(chunks) == 1 else finv_for(names)
        for n in names:
            w = modules[n].weight
            pruned = ~blocks_of(new[f"{n}.weight"].float(), block).bool()
            pad = (-w.numel()) % block
            if pad:  # padded tail positions are not weights: never in Q
                pruned.view(-1)[w.numel() :] = False
            dw = obs_update(blocks_of(w, block), finvs[n], pruned)
            updates[n] = (dw.reshape(-1)[: w.numel()]).view_as(w).to(w.dtype).to(w.device)
        del finvs
    with torch.no_grad():
        for n, dw in updates.items():
            modules[n].weight.add_(dw)
    M.set_masks(modules, new)


GRADIENT_SOURCES = ("fresh", "training")


@dataclass(frozen=True)
class Settings:
    """oBERT's own settings (recipe: `prune.options.obert`)."""

    block_size: int = 50  # weights per Fisher block
    num_grads: int = 1024  # mini-batch gradients per pruning step
    grad_batch_size: int = 8
    damp: float = 1e-7  # the paper's most sensitive hyper-parameter
    chunk_mb: int = 4096  # inverse-Fisher memory per chunk of layers
    # "fresh": num_grads new mini-batches per pruning step; "training": the training steps' own
    gradients: str = "fresh"

    def check(self, modules: dict | None = None, pattern: str | None = None) -> None:
        if self.gradients not in GRADIENT_SOURCES:
            raise UserError(
                f"prune.options.obert.gradients must be one of {', '.join(GRADIENT_SOURCES)}, got '{self.gradients}'"
            )
        for f in fields(self):
            if f.name != "gradients" and getattr(self, f.name) <= 0:
                raise UserError(f"prune.options.obert.{f.name} must be > 0, got {getattr(self, f.name)}")
        check_block_pattern(self.block_size, pattern)
        if modules:
            name, mod = min(modules.items(), key=lambda kv: kv[1].weight.numel())
            if self.block_size > mod.weight.numel():
                raise UserError(
                    f"prune.options.obert.block_size {self.block_size} is larger than layer {name} ({mod.weight.numel()} weights)"  # noqa: E501 - one message/literal
                )


class OBert:
    about = "Optimal BERT Surgeon: block-diagonal empirical Fisher saliency + OBS weight update"
    Settings = Settings

    def __init__(
        self,
        settings: Settings,
        scope: str,
        pattern: str | None,
        *,
        gradients,
        sum_across_ranks=None,
        rank: int = 0,
        events: list[int] | tuple[int, ...] = (),
        **_,
    ):
        """`gradients(names, salt)`: the stream of mini-batch gradients (`training.gradient_stream`);
        `sum_across_ranks`: an in-place all-reduce with several processes; `events`: the optimizer
        steps at which `prune_step` will be called (for `gradients: training`)."""
        self.settings, self.scope, self.pattern = settings, scope, pattern
        self.gradients, self.sum_across_ranks, self.rank = gradients, sum_across_ranks, rank
        self.events = sorted(events)
        self.fisher: dict[str, torch.Tensor] | None = None  # sum of g g^T over the observed steps
        self.pending: dict[str, list[torch.Tensor]] = {}
        self.observed = 0

    def observe(self, step: int, modules: dict) -> None:
        """After training step `step`'s backward pass: with `gradients: training`, add its (masked)
        gradients to the Fisher sum if the next pruning step is at most num_grads steps away."""
        s = self.settings
        nxt = next((e for e in self.events if e > step), None)
        if s.gradients != "training" or nxt is None or nxt - step > s.num_grads:
            return
        if _chunks(modules, s.block_size, s.chunk_mb << 20)[1:]:
            return  # more than one chunk: the inverse does not fit, fresh gradients instead
        if self.fisher is None:
            self.fisher = {
                n: torch.zeros(
                    blocks_of(m.weight, s.block_size).shape[0], s.block_size, s.block_size, device=m.weight.device
                )
                for n, m in modules.items()
            }
            self.pending = {n: [] for n in modules}
        for n, m in modules.items():
            self.pending[n].append(blocks_of(m.weight.grad, s.block_size).clone())  # clipping scales .grad in place
        self.observed += 1
        if len(self.pending[next(iter(modules))]) >= 32:
            self._flush()

    def state_dict(self) -> dict:
        """What `observe` has gathered since the last event (a checkpoint keeps it: a resumed run
        prunes on the same Fisher)."""
        if self.fisher is not None:
            self._flush()
        return {"fisher": self.fisher, "observed": self.observed}

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.observed = state.get("fisher"), int(state.get("observed", 0))
        self.pending = {n: [] for n in self.fisher} if self.fisher is not None else {}

    def _flush(self) -> None:
        for n, gs in self.pending.items():
            if gs:
                accumulate_(self.fisher[n], torch.stack(gs, -1), 1)
                gs.clear()

    def _take_fisher(self) -> dict[str, torch.Tensor] | None:
        """The observed Fisher, damped and averaged, if enough steps were observed; resets."""
        s, fisher, count = self.settings, self.fisher, self.observed
        if fisher is not None:
            self._flush()
        self.fisher, self.pending, self.observed = None, {}, 0
        if fisher is None or count < max(1, s.num_grads // 2):
            return None
        eye = torch.eye(s.block_size, device=next(iter(fisher.values())).device) * s.damp
        return {n: f.div_(count).add_(eye) for n, f in fisher.items()}

    def prune_step(self, modules: dict, sparsity: float) -> None:
        s = self.settings
        # fresh gradient batches at every pruning event, seeded by the event's sparsity (a
        # resumed run draws the same ones), unless the training steps gave theirs
        ctx = {
            "pattern": self.pattern,
            "rank": self.rank,
            "sum_across_ranks": self.sum_across_ranks,
            "obert": {
                "block_size": s.block_size,
                "num_grads": s.num_grads,
                "damp": s.damp,
                "chunk_bytes": s.chunk_mb << 20,
            },
            "gradients": partial(self.gradients, salt=round(sparsity * 1e6)),
            "fisher": self._take_fisher() if s.gradients == "training" else None,
        }
        prune_step(modules, sparsity, self.scope, ctx)
