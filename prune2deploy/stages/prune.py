"""Stage 2: prune the encoder's Linear weights during fine-tuning, with KD from the teacher.

Schedule (cubic, large first step, LR rewinds) from `pruning.schedule`; the method's
`prune_step` raises the masks at each pruning event; masks are re-applied after every
optimizer step and checked exact at the end.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..train import distributed as D
from ..errors import UserError, VerificationError
from ..files import write_json_atomic
from ..model.load import load_model, load_tokenizer
from ..progress import warn
from ..pruning import masks as M
from ..pruning.registry import get_method, settings_for
from ..pruning.schedule import make_plan
from ..pruning import family, structured_target
from ..train.loop import FitConfig, fit, gradient_stream
from .common import StageContext, checkpoint_files, checkpoint_path, inputs_cache, load_teacher, setup, train_data

NEEDS = ("latency", "teacher")
# structured: the latency loop leaves out a dense INT8 reference under the accuracy gate (measure/dense_gate.py)
READS = ("task", "model", "seed", "precision", "attention_dropout", "data", "prune", "bench.accuracy_gate",
         "bench.accuracy_examples", "export.opset", "export.calibration", "export.calibration_examples")
PARALLEL = True  # data parallel: every rank trains, rank 0's masks are broadcast


def layer_sparsity(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: round(1.0 - m.float().mean().item(), 6) for k, m in masks.items()}


def run(ctx: StageContext) -> dict:
    recipe, out = ctx.recipe, ctx.out
    task, base_model = setup(recipe)
    p = recipe.prune
    teacher_dir = ctx.result("teacher")["model_dir"]
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_teacher(ctx, task)
    student = load_model(
        teacher_dir if p.init_from == "teacher" else base_model,
        task.auto_class,
        task.num_labels,
        recipe.attention_dropout,
    )

    data_recipe = (
        recipe
        if p.train_examples is None
        else replace(recipe, data=replace(recipe.data, train_examples=p.train_examples))
    )
    features, _, data_info = train_data(data_recipe, task, tokenizer)
    modules = M.prunable_modules(student, p.include_embeddings, p.include_head)
    M.attach_masks(modules)
    settings = settings_for(p.method, p.options, p.pattern, modules)
    structured = p.pattern == M.STRUCTURED
    if not structured:
        M.warn_few_kept(modules, p.target_sparsity)
    scale = recipe.epoch_scale()
    steps_per_epoch = max(1, len(features) // p.batch_size)
    # structured: the schedule raises the fraction of the dense model's time removed
    plan = make_plan(replace(p, target_sparsity=recipe.schedule_target()), scale, steps_per_epoch)
    rungs = {}  # the family's members below the final target: name -> fraction of time removed at its event
    if structured and plan.prune_steps:
        below = family.ladder_of(p)[:-1]
        events, placed = family.place_rungs(list(plan.prune_steps), [1 - 1 / x for x in below], strict=bool(p.ladder))
        if len(placed) < len(below):
            warn(f"the schedule has {len(plan.prune_steps)} pruning events: the default ladder's "
                 f"{', '.join(family.name_of(x) for x in below[:len(below) - len(placed)])} member left out")
        plan = replace(plan, prune_steps=tuple(events))
        rungs = {family.name_of(x): 1 - 1 / x for x in below[len(below) - len(placed):]}  # the lowest left out
    kd_teacher = teacher if p.kd_hardness > 0 else None
    nm, block, group = M.parse_pattern(p.pattern), M.block_of(p.pattern), M.group_of(p.pattern)
    odd = next((n for n, mod in modules.items() if mod.weight.shape[-1] % group), None)
    if odd:  # the pattern cannot be laid on this tensor exactly
        raise UserError(
            f"--pattern {p.pattern}: {odd} has input dim {modules[odd].weight.shape[-1]}, not a multiple of {group}"
        )
    # what a method may need, as named resources: a stream of training-loss gradients and an
    # all-reduce (methods that need neither ignore them)
    gradients = None
    if hasattr(settings, "num_grads"):
        gradients = gradient_stream(
            student,
            features,
            tokenizer,
            modules,
            settings.num_grads,
            settings.grad_batch_size,
            teacher=kd_teacher,
            kd_temperature=p.kd_temperature,
            kd_hardness=p.kd_hardness,
            precision=recipe.precision,
            seed=recipe.seed,
            description=f"{p.method} gradients",
            rank=D.rank(),
            world=D.world_size(),
        )
    resources = {}
    if structured:  # structures, latency table and loop timer, Hessians: pruning/structured_target.py
        train_split, dev, _ = task.load(recipe)
        from ..measure.dense_gate import teacher_int8

        resources = structured_target.resources(
            recipe, task, tokenizer, student, modules, features, settings, ctx.path("latency", "table"),
            plan.prune_steps[-1][1] if plan.prune_steps else None,
            lambda: inputs_cache(task, tokenizer, task.sample_inputs(dev, 64)), D.rank(),
            int8_gate=lambda names: teacher_int8(recipe, task, teacher_dir, tokenizer, train_split, dev, names,
                                                 recipe.threads or torch.get_num_threads()))
        snapshots = family.Snapshots(checkpoint_files(ctx.run_dir, "prune"), student, modules, D.rank())
        resources |= {"rungs": rungs, "snapshot": snapshots.take}
    method = get_method(p.method)(
        settings,
        p.scope,
        p.pattern,
        gradients=gradients,
        sum_across_ranks=D.sum_ if D.active() else None,
        rank=D.rank(),
        events=[step for step, _ in plan.prune_steps],
        **resources,
    )
    if hasattr(method, "prepare"):
        method.prepare(modules)  # before training (structured: the latency loop, on rank 0 where it can time)
    cfg = FitConfig(
        total_steps=plan.total_steps,
        batch_size=p.batch_size,
        lr_at=plan.lr_at,
        weight_decay=p.weight_decay,
        precision=recipe.precision,
        seed=recipe.seed,
        kd_temperature=p.kd_temperature,
        kd_hardness=p.kd_hardness,
        group_by_length=recipe.data.group_by_length,
        prune_events=dict(plan.prune_steps),
        description=f"prune {p.method} → " + (f"{p.target_speedup:g}x" if structured else f"{p.target_sparsity:g}"),
        kd_hidden=p.kd_hidden,
        checkpoint=checkpoint_path(ctx.run_dir, "prune"),
        checkpoint_every=recipe.checkpoint_every,
        checkpoint_tag=ctx.key,
    )
    # structured: recovery after the final event trains the compact model (train/compaction.py)
    compacted = (structured_target.compaction(p, resources, plan.prune_steps[-1][0])
                 if structured and plan.prune_steps else None)
    train_log = fit(
        student,
        features,
        tokenizer,
        cfg,
        teacher=kd_teacher,
        modules=modules,
        prune_fn=method.prune_step,
        observe_fn=getattr(method, "observe", None),
        method_state=(method.state_dict, method.load_state_dict) if hasattr(method, "state_dict") else None,
        compaction=compacted,
    )

    masks = compacted.masks if compacted is not None and compacted.done else M.get_masks(modules)
    if structured:
        members = []  # the family below the final target, each recovered briefly on its compact model
        steps = member_steps(p, plan, steps_per_epoch, train_log)
        for name, rec in (method.structured.members.items() if rungs else ()):
            model, kept = family.recover(
                name, snapshots,
                lambda: load_model(teacher_dir if p.init_from == "teacher" else base_model, task.auto_class,
                                   task.num_labels, recipe.attention_dropout),
                lambda m: M.prunable_modules(m, p.include_embeddings, p.include_head),
                cfg, steps, features, tokenizer, kd_teacher, structured_target.check_masks)
            # rank 0 chose the widths (its loop, its table; the masks broadcast): its record is checked
            members.append(structured_target.save_member(out, name, model, tokenizer, kept, rec, steps, D.is_main()))
        return {**structured_target.finish(out, p, student, tokenizer, modules, masks, resources, method,
                                           train_log, compacted, members),
                **_schedule_and_masks(p, scale, plan, steps_per_epoch, data_info, masks)}
    try:
        if nm:
            M.check_pattern(masks, *nm)
        else:
            if block:
                M.check_blocks(masks, block)
            M.check_exact(masks, p.target_sparsity, p.scope, group=block or 1)
    except AssertionError as e:
        raise VerificationError(f"prune: masks are not at the target sparsity: {e}") from None
    for name, module in modules.items():
        if bool((module.weight[~getattr(module, M.MASK)] != 0).any()):
            raise VerificationError(f"prune: {name} has non-zero weights under its mask")

    student.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    M.save_masks(masks, out / "masks.safetensors")
    write_json_atomic(out / "train_log.json", train_log)
    return {
        "method": p.method,
        "target_sparsity": p.target_sparsity,
        "scope": p.scope,
        **_schedule_and_masks(p, scale, plan, steps_per_epoch, data_info, masks),
    }


def member_steps(p, plan, steps_per_epoch: int, train_log: dict) -> int:
    """A family member's recovery on its compact model: `prune.member_recovery_epochs`, or (None)
    as many steps as the last rung trained at its final widths (its compaction's extension included)."""
    if p.member_recovery_epochs is not None:
        return round(p.member_recovery_epochs * steps_per_epoch)
    c = train_log.get("compaction") or {}
    if "remaining_steps" in c:
        return c["remaining_steps"] + c.get("extra_steps", 0)
    return plan.total_steps - plan.prune_steps[-1][0] if plan.prune_steps else 0


def _schedule_and_masks(p, scale, plan, steps_per_epoch, data_info, masks) -> dict:
    """The record fields every prune run has: its schedule, data, the masks' sparsity, its files."""
    report = M.sparsity_report(masks)
    return {
        "epoch_scale": round(scale, 4),
        "epochs": round(p.epochs * scale, 4),
        "total_steps": plan.total_steps,
        "steps_per_epoch": steps_per_epoch,
        "prune_steps": [list(e) for e in plan.prune_steps],
        "data": data_info,
        "sparsity": {
            "encoder": report["overall"],
            "zeros": report["zeros"],
            "total": report["total"],
            "per_layer": layer_sparsity(masks),
        },
        "model_dir": "prune/model",
        "masks": "prune/masks.safetensors",
    }
