"""The Optimal BERT Surgeon (oBERT, Kurtic et al. 2022): second-order pruning with a
block-diagonal empirical Fisher.

For every block of B consecutive weights of each prunable tensor we keep the inverse of
    F = lambda * I + (1/m) * sum_i g_i g_i^T
built from F^-1 = I / lambda by m Sherman-Morrison rank-one updates (never a d x d matrix:
memory is d * B). Saliency of weight q: w_q^2 / (2 [F^-1]_qq). After the global or per-layer
selection, the surviving weights of each block get the OBS update for the set Q of pruned
weights in it:  dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q,  then the masks are applied.

Gradients come from `ctx["gradients"](names)`: an iterable of {name: grad} dicts, one per
mini-batch gradient (m of them). Layers are processed in chunks that fit `chunk_bytes`; with
more than one chunk the gradients are computed again for each chunk (time for memory).
"""

from __future__ import annotations

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


def fisher_inverse(grads: Iterable[torch.Tensor], n_blocks: int, block: int, damp: float, m: int, device=None) -> torch.Tensor:
    """Block-diagonal inverse empirical Fisher from m gradients, by Sherman-Morrison updates.

    `grads` yields (n_blocks, block) tensors. F_k = F_{k-1} + g g^T / m, so
    F_k^-1 = F_{k-1}^-1 - (F_{k-1}^-1 g)(F_{k-1}^-1 g)^T / (m + g^T F_{k-1}^-1 g).
    """
    finv = init_inverse(n_blocks, block, damp, device)
    for g in grads:
        rank_one_update_(finv, g, m)
    return finv


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


def obs_update(w_blocks: torch.Tensor, finv: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q per block, Q = `pruned` (bool, (n, B)).

    Batched over blocks with a varying Q: A = [F^-1]_QQ on Q x Q and the identity elsewhere,
    rhs = w on Q and 0 elsewhere, so x = A^-1 rhs vanishes off Q and dw = -F^-1 x.
    """
    q = pruned.float()
    qq = q.unsqueeze(-1) * q.unsqueeze(-2)
    eye = torch.eye(w_blocks.shape[1], device=w_blocks.device).expand_as(finv)
    a = finv * qq + eye * (1.0 - q).unsqueeze(-1)
    rhs = (w_blocks * q).unsqueeze(-1)
    x = torch.linalg.solve(a, rhs)
    return -torch.bmm(finv, x).squeeze(-1)


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


def prune_step(modules, sparsity: float, scope: str, ctx) -> None:
    """Raise the masks of `modules` to `sparsity` by oBERT saliency, with the OBS weight update."""
    cfg = ctx["obert"]
    block, damp, m = cfg["block_size"], cfg["damp"], cfg["num_grads"]
    gradients: Callable[[list[str]], Iterable[dict[str, torch.Tensor]]] = ctx["gradients"]
    for name, mod in modules.items():
        if block > mod.weight.numel():
            raise UserError(f"oBERT block size {block} is larger than {name} ({mod.weight.numel()} weights)")
    chunks = _chunks(modules, block, cfg.get("chunk_bytes", 4 << 30))
    kept: dict[str, torch.Tensor] = {}

    def finv_for(names: list[str]) -> dict[str, torch.Tensor]:
        """Stream the m gradients once, updating every tensor of the chunk."""
        finvs = {n: init_inverse(blocks_of(modules[n].weight, block).shape[0], block, damp, modules[n].weight.device) for n in names}
        count = 0
        for g in gradients(names):
            count += 1
            for n in names:
                rank_one_update_(finvs[n], blocks_of(g[n], block), m)
        if count != m:
            raise RuntimeError(f"oBERT expected {m} gradients, got {count}")
        return finvs

    scores = {}
    for names in chunks:
        finvs = finv_for(names)
        for n in names:
            w = modules[n].weight
            s = saliency(blocks_of(w, block), finvs[n]).reshape(-1)[: w.numel()].view_as(w)
            scores[f"{n}.weight"] = s.to(w.device)
        if len(chunks) == 1:
            kept = finvs
    new = M.masks_from_scores(scores, M.get_masks(modules), sparsity, scope)
    for names in chunks:
        finvs = kept if len(chunks) == 1 else finv_for(names)
        for n in names:
            w = modules[n].weight
            pruned = ~blocks_of(new[f"{n}.weight"].float(), block).bool()
            pad = (-w.numel()) % block
            if pad:  # padded tail positions are not weights: never in Q
                pruned.view(-1)[w.numel():] = False
            wb = blocks_of(w, block)
            dw = obs_update(wb, finvs[n], pruned)
            with torch.no_grad():
                w.add_((dw.reshape(-1)[: w.numel()]).view_as(w).to(w.dtype).to(w.device))
    M.set_masks(modules, new)
