"""Stage 0: the latency table a structured target is met on (`--speedup X`; nothing otherwise).

Picks the target runtime (`prune.latency_runtime`; "auto": the production runtime on which the
dense model is fastest here, measured), times one layer's attention at every head count and
FFN at a grid of widths at the recipe's bench shapes (`latency_table.measure`, graphs exported
as the artifact ships), and refuses a target that removing every head and neuron could not
reach, before any training. A reused table (`prune.latency_table`) is checked against the
model, the bench shapes and the exporter (`run.preflight` does the same before anything is written).
"""

from __future__ import annotations

from ..errors import UserError
from ..files import write_json_atomic
from ..measure.latency_table import fastest_runtime, measure
from ..model.load import load_config, load_tokenizer
from .common import StageContext, inputs_cache, setup

NEEDS = ()
READS = ("task", "model", "prune", "bench", "threads", "export")
PARALLEL = False


def run(ctx: StageContext) -> dict:
    import torch

    recipe, out = ctx.recipe, ctx.out
    p = recipe.prune
    if not p.target_speedup:
        return {"structured": False}
    if p.latency_table:  # measured on the target machine, reused here (e.g. training on a GPU box)
        table = reused_table(recipe)
        _check_reachable(p.target_speedup, table)
        write_json_atomic(out / "table.json", table.to_dict())
        return {"structured": True, "runtime": table.runtime, "table": "latency/table.json", "from": p.latency_table,
                "max_speedup": round(table.max_speedup(), 3)}
    task, model_id = setup(recipe)
    config = load_config(model_id)
    tokenizer = load_tokenizer(model_id)
    _, dev, _ = task.load(recipe)
    samples = task.sample_inputs(dev, 64)
    threads = recipe.threads or torch.get_num_threads()
    shapes = [(b, s) for b in recipe.bench.batch_sizes for s in recipe.bench.seq_lens]
    inputs_for = inputs_cache(task, tokenizer, samples)

    candidates = None
    runtime = p.latency_runtime
    if runtime == "auto":
        runtime, candidates = fastest_runtime(config, task, shapes, threads, inputs_for, recipe.export.opset)
    table = measure(config, task, runtime, shapes, threads, inputs_for, recipe.export.opset)
    _check_reachable(p.target_speedup, table)
    write_json_atomic(out / "table.json", table.to_dict())
    return {
        "structured": True,
        "runtime": runtime,
        "dense_ms_by_runtime": candidates,
        "table": "latency/table.json",
        "max_speedup": round(table.max_speedup(), 3),
        "threads": threads,
    }


def reused_table(recipe):
    """`prune.latency_table`, read and checked: a p2d table, for this model's layers, heads and
    FFN width, at this run's bench shapes, timed on graphs exported as this run exports them,
    on a runtime installed here. UserError otherwise."""
    from ..files import read_json
    from ..measure.latency_table import EXPORTER, Table
    from ..model.load import resolve_model
    from ..runtimes.registry import get_runtime

    p = recipe.prune
    source = f"prune.latency_table {p.latency_table}"
    try:
        table = Table.from_dict(read_json(p.latency_table))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{source}: not a p2d latency table ({e})") from None
    shapes = [[b, s] for b in recipe.bench.batch_sizes for s in recipe.bench.seq_lens]
    table.check_fits(load_config(resolve_model(recipe.model)), shapes, EXPORTER, recipe.export.opset, source)
    try:
        get_runtime(table.runtime)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return table


def _check_reachable(speedup: float, table) -> None:
    if speedup >= table.max_speedup():
        raise UserError(
            f"--speedup {speedup:g} cannot be reached on {table.runtime} without removing every head and FFN "
            f"neuron (embeddings, LayerNorms and the head alone allow at most {table.max_speedup():.2f}x there)"
        )
