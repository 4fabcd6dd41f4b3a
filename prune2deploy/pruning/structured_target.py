"""What a `--speedup X` run's prune stage hands the method and keeps afterwards.

`resources`: the removable structures, the latency table (and, on rank 0 where it can time, the
latency loop's timer on the table's runtime), and for a second-order criterion the layer-input
Hessians with the LayerNorm scales that put every module's loss in one unit. `compaction`: the
recovery on the compact model after the final event. `finish`: whole structures checked, the
masked model saved where it was trained to the end (what export checks the compact one against),
the compact model saved (what ships), and the record's structured fields: widths, the table's
prediction, the latency loop's measurements, the compaction's.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import VerificationError
from ..files import read_json, write_json_atomic
from ..progress import log
from . import masks as M


def resources(recipe, task, tokenizer, student, modules, features, settings, table_path: Path, final_sparsity,
              inputs_for, rank: int, int8_gate=None) -> dict:
    from ..measure.latency_table import Table
    from ..train.loop import input_hessians
    from .structures import Structure

    p = recipe.prune
    table = Table.from_dict(read_json(table_path))
    structure = Structure.of(student, modules)
    out = {
        "structure": structure,
        "latency": table,
        "widths": p.widths,
        "timer": timer(recipe, task, student.config, table, inputs_for, rank, int8_gate),
        "final_sparsity": final_sparsity,
    }
    if hasattr(settings, "calibration_examples"):  # ZipLM: OBS with the layer-input Hessians
        wanted = set(structure.norm_names().values())
        out["norms"] = {n: m for n, m in student.named_modules() if n in wanted}
        out["hessians"] = input_hessians(
            student, features, tokenizer, modules, settings.calibration_examples, settings.batch_size,
            precision=recipe.precision, seed=recipe.seed, description=f"{p.method} hessians", norms=out["norms"],
        )
    return out


def timer(recipe, task, config, table, inputs_for, rank: int, int8_gate=None):
    """The latency loop's timer (`measure.latency_table.ShapeTimer`) on the table's runtime, or
    None: the loop off, another rank (rank 0 measures; its masks are broadcast), or a table
    measured on another CPU (a reused table: this machine's timings would not be the target's).
    `int8_gate`: which dense INT8 options keep the accuracy gate (`measure.dense_gate`)."""
    import torch

    from ..measure.latency_table import ShapeTimer
    from ..measure.machine import cpu_info

    if not recipe.prune.latency_loop or rank != 0:
        return None
    here = cpu_info()["model"]
    if table.cpu and table.cpu != here:
        log(f"[yellow]latency loop off: the table was measured on {table.cpu}, this is {here}; the widths are "
            "the table's prediction (measure them there: p2d bench)[/yellow]")
        return None
    return ShapeTimer(config, task, table.runtime, table.shapes, recipe.threads or torch.get_num_threads(),
                      inputs_for(), recipe.export.opset, reference=recipe.prune.latency_reference,
                      int8_gate=int8_gate)


def check_masks(structure, modules: dict, masks: dict) -> None:
    """The masks remove whole structures and every masked weight is zero."""
    try:
        structure.check(masks)
    except AssertionError as e:
        raise VerificationError(f"prune: masks do not remove whole structures: {e}") from None
    for name, module in modules.items():
        if bool((module.weight[~getattr(module, M.MASK)] != 0).any()):
            raise VerificationError(f"prune: {name} has non-zero weights under its mask")


def compaction(p, res: dict, at_step: int):
    """Recovery on the compact model after the final event (`prune.compact_recovery`), or None."""
    if not p.compact_recovery:
        return None
    from ..train.compaction import Compaction

    structure = res["structure"]
    return Compaction(at_step, structure.kept, lambda modules, masks: check_masks(structure, modules, masks),
                      reuse=p.recovery_reuse, max_extra=p.max_recovery_extension)


def save_member(out: Path, name: str, model, tokenizer, kept: dict, rec: dict, recovery_steps: int,
                check_event: bool = True) -> dict:
    """A family member below the final target: its compact model saved (`prune/members/<name>/model`),
    its widths checked against the ones its event chose, and its record."""
    from .structures import counts, widths_of

    widths = counts(kept)
    if widths_of(model) != widths or (check_event and widths != rec["widths"]):
        raise VerificationError(f"prune: member {name} keeps {widths_of(model)}, its event chose {rec['widths']}")
    where = out / "members" / name / "model"
    model.save_pretrained(where, safe_serialization=True)
    tokenizer.save_pretrained(where)
    log(f"[dim]member {name}: heads {widths['heads']}, FFN {widths['ffn']}, recovered {recovery_steps} steps[/dim]")
    return {"name": name, "target_speedup": rec["target_speedup"], "predicted_speedup": rec["predicted_speedup"],
            "widths": widths, "kept_heads": kept["heads"], "latency_loop": rec.get("latency_loop"),
            "recovery_steps": recovery_steps, "model_dir": f"prune/members/{name}/model"}


def finish(out: Path, p, student, tokenizer, modules, masks, res: dict, method, train_log: dict,
           compacted=None, members: list[dict] | None = None) -> dict:
    """Check, save the masked and the compact model, and return the record's structured fields.
    `compacted`: the Compaction that already made the student compact during recovery (no
    masked model is left to save: its masks are, and the compaction checked the two agree)."""
    from .structures import compact, counts, widths_of

    structure, table = res["structure"], res["latency"]
    done = compacted is not None and compacted.done
    if done:
        kept = compacted.kept
        M.save_masks(masks, out / "masks.safetensors")
    else:
        check_masks(structure, modules, masks)
        kept = structure.kept(modules)
        student.save_pretrained(out / "masked", safe_serialization=True)
        M.save_masks(masks, out / "masks.safetensors")
        for module in modules.values():  # the mask buffers go; the compact model has none
            del module._buffers[M.MASK]
        compact(student, kept)
    student.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    widths = counts(kept)
    if widths_of(student) != widths:
        raise VerificationError(f"prune: compact widths {widths_of(student)} are not the kept ones {widths}")
    write_json_atomic(out / "train_log.json", {**train_log, "structured_steps": getattr(method, "history", [])})
    full = {"heads": [layer.heads for layer in structure.layers], "ffn": [layer.ffn for layer in structure.layers]}
    return {
        "method": p.method,
        "pattern": M.STRUCTURED,
        "target_speedup": p.target_speedup,
        "latency_runtime": table.runtime,
        "predicted_speedup": round(1.0 / table.relative(widths), 4),
        "predicted_ms": [round(x, 3) for x in table.ms(widths)],
        # the latency loop: target, predicted and measured speedup per shape, before training and at the end
        "latency_loop": getattr(getattr(method, "structured", None), "loops", {}) or None,
        # the teacher's static INT8 per runtime against the accuracy gate: one under it is no reference
        "dense_gate": getattr(res.get("timer"), "gate", None),
        "dense_ms": table.full_ms,
        "shapes": table.shapes,
        "widths": widths,
        "full_widths": full,
        "kept_heads": kept["heads"],
        "masked_model_dir": None if done else "prune/masked",
        # recovery on the compact model: when, the two step costs measured, the steps added
        "compaction": compacted.info if done else None,
        # the family: the members below this one (the last rung), smallest target first
        "name": f"{p.target_speedup:g}x",
        "members": members or [],
    }
