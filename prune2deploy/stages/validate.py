"""Stage 3: accuracy of the dense teacher and the sparse model on the same held-out data.

SQuAD writes the official-format predictions (`{"question id": "answer text"}`) of the
sparse model to `predictions.json` (and the dense model's to `predictions_dense.json`); each
member of a `--speedup` family below the final target is scored too (`members`).
"""

from __future__ import annotations

from ..files import inside, write_json_atomic
from ..model.load import load_model, load_tokenizer
from .common import StageContext, setup


NEEDS = ("teacher", "prune")
READS = ("task", "data")
PARALLEL = False


def run(ctx: StageContext) -> dict:
    recipe, out = ctx.recipe, ctx.out
    task, _ = setup(recipe)
    _, dev, info = task.load(recipe)
    dense_dir = ctx.result("teacher")["model_dir"]
    sparse_dir = str(ctx.path("prune", "model_dir"))
    metrics = {}
    for label, model_dir, fname in (
        ("dense", dense_dir, "predictions_dense.json"),
        ("sparse", sparse_dir, "predictions.json"),
    ):
        tokenizer = load_tokenizer(model_dir)
        model = load_model(model_dir, task.auto_class, task.num_labels)
        m, predictions = task.evaluate(model, tokenizer, dev, recipe.data, description=f"eval {label}")
        metrics[label] = m
        write_json_atomic(out / fname, predictions)
    d, s = metrics["dense"][task.metric], metrics["sparse"][task.metric]
    members = {}  # a --speedup family: each member below the final target on the same examples
    for member in ctx.result("prune").get("members") or []:
        model_dir = str(inside(ctx.run_dir, member["model_dir"], "prune record member"))
        model = load_model(model_dir, task.auto_class, task.num_labels)
        m, predictions = task.evaluate(model, load_tokenizer(model_dir), dev, recipe.data,
                                       description=f"eval member {member['name']}")
        write_json_atomic(out / "members" / member["name"] / "predictions.json", predictions)
        members[member["name"]] = {**m, "retained": round(m[task.metric] / d, 4) if d else None}
    return {
        "metric": task.metric,
        "dense": metrics["dense"],
        "sparse": metrics["sparse"],
        "retained": round(s / d, 4) if d else None,
        "members": members,
        "data": info,
    }
