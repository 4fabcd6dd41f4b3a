"""The fine-tuning loop shared by the teacher and prune stages (inference: `inference.py`).

Plain and top-down: one loop, an optional teacher for KD, optional pruning events at given
optimizer steps, masks re-applied after every optimizer step. Knows models and tensors,
not stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..model.inference import collate, feature_lengths, logits_of, model_inputs, token_level
from ..progress import Bar, warn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def autocast(precision: str, device: str = "cpu"):
    """bf16 autocast where the hardware has it (AVX512-BF16/AMX on CPU, Ampere+ on CUDA)."""
    if precision == "auto":
        if device == "cuda":
            use = torch.cuda.is_bf16_supported()
        else:
            use = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
                getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
            )
    else:
        use = precision == "bf16"
    return torch.autocast(device, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def training_loss(
    model, batch: dict, teacher, kd_temperature: float, kd_hardness: float, teacher_logits=None, kd_hidden: float = 0.0
) -> torch.Tensor:
    """The task loss, or with a teacher the KD loss (`distill.kd_loss`): the one loss that both
    training and oBERT's gradient stream differentiate. `teacher_logits`: the teacher's outputs
    for this batch when already known (`TeacherOutputs`); else the teacher runs. `kd_hidden` > 0
    adds that weight of token-level hidden-state distillation (the teacher then runs every step)."""
    from ..pruning import distill

    hidden = teacher is not None and kd_hidden > 0
    out = model(**batch, output_hidden_states=True) if hidden else model(**batch)
    if teacher is None:
        return out.loss
    t_hidden = None
    if teacher_logits is None or hidden:
        with torch.no_grad():
            t_out = teacher(**model_inputs(batch), output_hidden_states=hidden)
        teacher_logits = logits_of(t_out) if teacher_logits is None else teacher_logits
        t_hidden = t_out.hidden_states if hidden else None
    mask = batch["attention_mask"] if token_level(out) else None  # QA heads: padding is no position
    loss = distill.kd_loss(logits_of(out), teacher_logits, out.loss, kd_temperature, kd_hardness, mask)
    if hidden:
        loss = loss + kd_hidden * distill.hidden_loss(out.hidden_states, t_hidden, batch["attention_mask"])
    return loss


class TeacherOutputs:
    """The teacher's outputs per feature, kept from the first time a feature is seen: the
    teacher is frozen and in eval mode, so a second epoch needs no teacher forward pass (a
    quarter of a prune step on a CPU). Token-level outputs (QA start/end) are kept at the
    feature's own length: the KD loss ignores padding, so a batch padded to another length gets
    the same loss."""

    def __init__(self, teacher):
        self.teacher, self.kept, self.token_level = teacher, {}, False

    def __call__(self, idx: list[int], batch: dict) -> list[torch.Tensor]:
        mask = batch["attention_mask"]
        if all(i in self.kept for i in idx):
            heads = zip(*(self.kept[i] for i in idx))
            return [self._pad(rows, mask) if self.token_level else torch.stack(rows) for rows in heads]
        with torch.no_grad():
            out = self.teacher(**model_inputs(batch))
        self.token_level = token_level(out)
        heads = logits_of(out)
        lengths = mask.sum(-1).tolist()
        for row, i in enumerate(idx):
            self.kept[i] = [(h[row, : lengths[row]] if self.token_level else h[row]).float() for h in heads]
        return heads

    @staticmethod
    def _pad(rows, mask: torch.Tensor) -> torch.Tensor:
        out = rows[0].new_zeros((*mask.shape, *rows[0].shape[1:]))  # the padded part is masked out of the loss
        for k, r in enumerate(rows):
            out[k, : len(r)] = r
        return out


@dataclass
class FitConfig:
    total_steps: int
    batch_size: int
    lr_at: Callable[[int], float]
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"
    seed: int = 0
    kd_temperature: float = 2.0
    kd_hardness: float = 1.0
    group_by_length: bool = False  # batches of similar lengths (less padding, same epochs)
    prune_events: dict[int, float] = field(default_factory=dict)  # step -> sparsity
    kd_hidden: float = 0.0  # weight of hidden-state distillation (0: logits only)
    description: str = "train"
    checkpoint: Path | None = None  # resume from / save to this file
    checkpoint_every: int = 0  # optimizer steps; 0: never
    checkpoint_tag: str = ""  # must match to resume (e.g. the stage key)


GROUP_BATCHES = 32  # length grouping sorts within windows of this many batches


def batch_order(n: int, batch_size: int, seed: int, step: int, lengths: list[int] | None = None) -> list[int]:
    """Feature indices of optimizer step `step`: a seeded permutation per epoch, so any step
    can be found again after a restart (no hidden loader state).

    With `lengths` (tokens per feature), batches are grouped by length: the epoch's
    permutation is cut into windows of GROUP_BATCHES batches, each window sorted by length
    and cut into batches, and the batches shuffled. Every feature is still seen once an
    epoch, but a batch pads to a length close to its members' (SQuAD at 256 tokens: 1.55x
    fewer padded tokens than random batches)."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    if lengths is None or n < batch_size:
        return perm[k * batch_size : (k + 1) * batch_size].tolist()
    perm = perm[: per_epoch * batch_size].tolist()
    window = batch_size * GROUP_BATCHES
    batches = []
    for w in range(0, len(perm), window):
        chunk = sorted(perm[w : w + window], key=lambda i: -lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return batches[order[k]]


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temp file, then rename over the old checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, tag: str) -> dict | None:
    """The checkpoint at `path` if it is this run's; else None, and one line says why (a torn
    or foreign file is not resumed from: training starts again from step 0)."""
    if not path or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle objects
    except Exception as e:  # noqa: BLE001 - a torn or foreign file is simply not resumed from
        warn(f"checkpoint {path} is unreadable ({type(e).__name__}): starting again from step 0")
        return None
    if not isinstance(state, dict) or state.get("tag") != tag:
        warn(f"checkpoint {path} belongs to another run or config: starting again from step 0")
        return None
    return state


def fit(
    model, features, tokenizer, cfg: FitConfig, teacher=None, modules=None, prune_fn=None, observe_fn=None,
    method_state=None, compaction=None,
) -> dict:
    """Train `model` for `cfg.total_steps` optimizer steps over `features`.

    With `teacher`, the loss is the KD loss; with `modules` (prunable, masks attached), the
    masks are raised at `cfg.prune_events` by `prune_fn(modules, sparsity)` and re-applied
    after every optimizer step. With `cfg.checkpoint`, the state (model, optimizer, masks,
    RNG, step, log) is saved atomically every `checkpoint_every` steps and a matching
    checkpoint is resumed from. `observe_fn(step, modules)` sees each step's gradients of the
    prunable weights (masked, before clipping; oBERT's Fisher from training). With
    `compaction` (`train/compaction.Compaction`), the model is made compact right after the
    event at its step and recovery goes on on the compact model, longer by the time it saves.
    Returns a small log (losses, pruning events, the compaction).
    """
    from . import distributed as D
    from ..pruning import masks as M

    device = D.device()  # a GPU when there is one (this rank's, with several processes)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    fn = collate(tokenizer)
    D.check_batch(cfg.batch_size, "batch size")

    def make_opt(m):
        decay = [p for n, p in m.named_parameters()
                 if p.requires_grad and not any(k in n for k in ("bias", "LayerNorm", "layer_norm"))]
        no_decay = [p for n, p in m.named_parameters()
                    if p.requires_grad and any(k in n for k in ("bias", "LayerNorm", "layer_norm"))]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr_at(0),
            fused=True,  # one pass over the parameters: 7x cheaper than the foreach step on a 2-core CPU
        )

    opt = make_opt(model)
    total, lr_at = cfg.total_steps, cfg.lr_at  # a compaction may lengthen the recovery
    if teacher is not None:
        teacher.eval()
    teacher_outputs = TeacherOutputs(teacher) if teacher is not None else None
    log = {"losses": [], "prune_events": [], "resumed_from": None}
    step = 0
    running = None
    state = load_checkpoint(cfg.checkpoint, cfg.checkpoint_tag) if cfg.checkpoint else None
    if state is not None:
        if state.get("compacted"):  # checkpointed after the compaction: the compact model again
            from .compaction import make_compact, stretch

            M.set_masks(modules, state["masks"])
            compaction.masks, compaction.info = state["masks"], state["compacted"]["info"]
            make_compact(model, modules, state["compacted"]["kept"])
            compaction.kept, modules = state["compacted"]["kept"], None
            opt = make_opt(model)
            if compaction.decided:  # else the compact steps are timed again
                total = cfg.total_steps + compaction.info["extra_steps"]
                lr_at = stretch(cfg.lr_at, compaction.at_step, cfg.total_steps, total)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if modules is not None:
            M.set_masks(modules, state["masks"])
        torch.set_rng_state(state["rng"])
        step, running = state["step"], state["running"]
        if method_state is not None and state.get("method") is not None:
            method_state[1](state["method"])  # what the method gathered between events (oBERT's Fisher)
        log = json.loads(state["log"])
        log["resumed_from"] = step
    sparsity = M.sparsity_report(M.get_masks(modules))["overall"] if modules is not None else None
    lengths = feature_lengths(features) if cfg.group_by_length else None
    train_model = D.wrap(model)  # DDP with several processes: gradients averaged over ranks

    def checkpoint() -> None:
        if not D.is_main():  # one writer; the state is the same on every rank
            return
        save_checkpoint(cfg.checkpoint, {
            "tag": cfg.checkpoint_tag, "step": step, "running": running, "log": json.dumps(log),
            "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
            "masks": M.get_masks(modules) if modules is not None else (compaction.masks if compaction else {}),
            "method": method_state[0]() if method_state is not None else None,
            "compacted": {"kept": compaction.kept, "info": compaction.info} if compaction and compaction.done else None,
        })

    def outputs_of(m, b):  # the compaction's parity check: the student's outputs, flat
        from ..model.inference import logits_of, model_inputs

        return torch.cat([t.float().flatten() for t in logits_of(m(**model_inputs(b)))])

    def synced_clock() -> float:  # a step's wall time: the GPU's queued work included
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return compaction.clock()

    with Bar(cfg.description, total) as bar:
        bar.advance(step)
        while step < total:
            if (
                modules is not None
                and step in cfg.prune_events
                and not any(e["step"] == step for e in log["prune_events"])
            ):
                prune_fn(modules, cfg.prune_events[step])
                D.broadcast_masks_and_weights(modules)  # rank 0's masks everywhere (several processes)
                sparsity = M.sparsity_report(M.get_masks(modules))["overall"]
                log["prune_events"].append({"step": step, "sparsity": cfg.prune_events[step]})
            model.train()
            idx = D.shard(batch_order(len(features), cfg.batch_size, cfg.seed, step, lengths))
            batch = {k: v.to(device) for k, v in fn([features[i] for i in idx]).items()}
            if compaction is not None and modules is not None and step == compaction.at_step:
                from .compaction import compact_in_training

                opt = compact_in_training(compaction, model, modules, opt, make_opt, batch, outputs_of, D.agree)
                modules = None
                train_model = D.wrap(model, replacing=train_model)
                log["compaction"] = compaction.info
            if compaction is not None:
                started = synced_clock()
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            with autocast(cfg.precision, device.type):
                t_logits = teacher_outputs(idx, batch) if teacher_outputs else None
                loss = training_loss(
                    train_model, batch, teacher, cfg.kd_temperature, cfg.kd_hardness, t_logits, cfg.kd_hidden
                )
            loss.backward()
            if modules is not None:  # pruned weights get no gradient: none counts in the clipping norm
                M.mask_gradients(modules)
                if observe_fn is not None:
                    observe_fn(step, modules)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if modules is not None:
                M.apply_masks(modules)
            step += 1
            if compaction is not None:
                compaction.timed(synced_clock() - started, step - 1, batch["input_ids"].numel())
                if compaction.ready():  # the compact steps' cost known: the recovery's length
                    from .compaction import mean, stretch

                    extra = compaction.decide(
                        cfg.total_steps - compaction.at_step,
                        D.share(mean(compaction.masked_times), "compaction: masked step"),
                        D.share(mean(compaction.compact_times), "compaction: compact step"),
                    )
                    extra = int(D.share(extra, "compaction: extra steps"))
                    total = cfg.total_steps + extra
                    lr_at = stretch(cfg.lr_at, compaction.at_step, cfg.total_steps, total)
                    bar.extend(total)
                    log["compaction"] = compaction.info
            value = D.mean(float(loss.detach()))  # the global batch's loss
            running = value if running is None else 0.95 * running + 0.05 * value
            if step % 10 == 0 or step == total:
                log["losses"].append({"step": step, "loss": round(running, 5)})
            info = f"loss {running:.3f} lr {lr_at(step - 1):.1e}"
            if sparsity is not None:
                info += f" sparsity {sparsity:.3f}"
            bar.advance(info=info)
            if cfg.checkpoint and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                checkpoint()
    if compaction is not None and compaction.done and not compaction.decided:  # too few steps left to time
        compaction.info.update(remaining_steps=cfg.total_steps - compaction.at_step, extra_steps=0)
        log["compaction"] = compaction.info
    model.to("cpu")  # callers save, verify and export on the CPU
    if teacher is not None:
        teacher.to("cpu")
    return log


def gradient_stream(
    model,
    features,
    tokenizer,
    modules: dict,
    n: int,
    batch_size: int,
    *,
    teacher=None,
    kd_temperature: float = 2.0,
    kd_hardness: float = 1.0,
    precision: str = "auto",
    seed: int = 0,
    description: str = "gradients",
    rank: int = 0,
    world: int = 1,
):
    """Return `gradients(names)`: yields n dicts {name: grad of module.weight}, one per mini-batch.

    The loss is the training loss (KD when a teacher is given). Dropout is off (eval mode) so
    the same seed gives the same gradients; the model's mode is restored afterwards. With
    `world` > 1 processes, rank r yields the gradients i with i % world == r of the same n
    (together the ranks compute each of the n once). `model` is the unwrapped module (no DDP
    gradient averaging: each gradient is one mini-batch's).
    """

    def gradients(names: list[str], salt: int = 0):
        device = next(model.parameters()).device  # here, not above: fit moves the model (to CUDA) after this is made
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(seed * 100_003 + salt)
        fn = collate(tokenizer)
        with Bar(description, len(range(rank, n, world))) as bar:
            for k in range(n):
                idx = torch.randint(0, len(features), (batch_size,), generator=gen).tolist()
                if k % world != rank:  # drawn on every rank, so each rank's draws stay in step
                    continue
                batch = {k: v.to(device) for k, v in fn([features[i] for i in idx]).items()}
                model.zero_grad(set_to_none=True)
                with autocast(precision, device.type):
                    loss = training_loss(model, batch, teacher, kd_temperature, kd_hardness)
                loss.backward()
                yield {name: modules[name].weight.grad.detach().float() for name in names}
                bar.advance()
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    return gradients


def input_hessians(model, features, tokenizer, modules: dict, n: int, batch_size: int, *, precision: str = "auto",
                   seed: int = 0, description: str = "hessians", norms: dict | None = None):
    """Return `hessians(names)`: {name: H} with H = mean over the non-padding tokens of n
    training features of x xᵀ, x the input of `modules[name]` (float64; ZipLM's layer-input
    Hessian). A name of `norms` (LayerNorm modules) gets instead the mean over those tokens of
    its input's variance across the hidden size (a 0-d float64 tensor): the scale that LayerNorm
    divides an error in its input by. Eval mode (no dropout); the model's mode is restored afterwards."""
    norms = norms or {}

    @torch.no_grad()
    def hessians(names: list[str]) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(seed * 100_003 + 7)
        idx_all = torch.randperm(len(features), generator=gen)[: min(n, len(features))].tolist()
        fn = collate(tokenizer)
        acc = {k: None for k in names}
        count = [0]
        keep = {}

        def hook(name):
            def f(mod, args):
                x = args[0].detach()
                x = x[keep["mask"]] if x.dim() == 3 else x.reshape(-1, x.shape[-1])
                with torch.autocast(x.device.type, enabled=False):  # the product in float64, not bf16
                    x = x.double()
                    h = x.T @ x
                acc[name] = h if acc[name] is None else acc[name] + h
            return f

        def var_hook(name):
            def f(mod, args):
                x = args[0].detach()
                x = x[keep["mask"]] if x.dim() == 3 else x.reshape(-1, x.shape[-1])
                with torch.autocast(x.device.type, enabled=False):
                    v = x.double().var(-1, unbiased=False).sum().reshape(1, 1)
                acc[name] = v if acc[name] is None else acc[name] + v
            return f

        handles = [modules[k].register_forward_pre_hook(hook(k)) if k in modules else
                   norms[k].register_forward_pre_hook(var_hook(k)) for k in names]
        try:
            batches = [idx_all[i : i + batch_size] for i in range(0, len(idx_all), batch_size)]
            with Bar(description, len(batches)) as bar:
                for idx in batches:
                    batch = {k: v.to(device) for k, v in fn([features[i] for i in idx]).items()}
                    mask = batch["attention_mask"].bool()
                    keep["mask"] = mask.reshape(-1, mask.shape[-1])  # multiple choice: (batch x choices, seq)
                    count[0] += int(keep["mask"].sum())
                    with autocast(precision, device.type):
                        model(**model_inputs(batch))
                    bar.advance()
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        out = {k: (v / max(1, count[0])).cpu() for k, v in acc.items()}
        return {k: (v.reshape(()) if k in norms and k not in modules else v) for k, v in out.items()}

    return hessians
