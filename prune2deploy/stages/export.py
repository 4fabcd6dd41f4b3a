"""Stage 4: ONNX export of the sparse and dense models (optimum's exporter, opset 14).

Writes `export/model.onnx` (sparse) and `export/dense.onnx` with the tokenizer and config
beside them; verifies, tensor by tensor, that every pruned weight's ONNX initializer has the
torch mask's zeros (the stage fails otherwise), and that ONNX outputs match PyTorch's on
real task inputs within `export.atol`. A `--speedup` family's members below the final target:
`export/members/<name>/model.onnx`, each checked the same way.
"""

from __future__ import annotations

from ..errors import VerificationError
from ..files import inside
from ..model.load import load_model, load_tokenizer
from ..graphs.onnx_export import export_onnx, parity, verify_against_masks, verify_structure
from ..pruning import masks as M
from .common import StageContext, prune_masks, setup


NEEDS = ("teacher", "prune")
READS = ("task", "export")
PARALLEL = False


def run(ctx: StageContext) -> dict:
    recipe, out = ctx.recipe, ctx.out
    task, _ = setup(recipe)
    _, dev, _ = task.load(recipe)
    sparse_dir = ctx.path("prune", "model_dir")
    dense_dir = ctx.result("teacher")["model_dir"]
    export_onnx(sparse_dir, task, recipe.export.opset, out / "model.onnx")
    export_onnx(dense_dir, task, recipe.export.opset, out / "dense.onnx")
    tokenizer = load_tokenizer(sparse_dir)
    tokenizer.save_pretrained(out)
    sparse = load_model(sparse_dir, task.auto_class, task.num_labels)
    sparse.config.save_pretrained(out)

    pr = ctx.result("prune")
    if pr.get("pattern") == M.STRUCTURED:
        return _structured(ctx, task, dev, tokenizer, sparse, dense_dir, pr)
    masks = prune_masks(ctx)
    report = verify_against_masks(sparse, masks, out / "model.onnx")
    nm, block = M.parse_pattern(recipe.prune.pattern), M.block_of(recipe.prune.pattern)
    if nm or block:  # ONNX zeros equal the masks tensor by tensor (just verified), so the pattern holds there too
        try:
            M.check_pattern(masks, *nm) if nm else M.check_blocks(masks, block)
        except AssertionError as e:
            raise VerificationError(f"export: {recipe.prune.pattern} pattern broken: {e}") from None

    samples = task.sample_inputs(dev, recipe.export.parity_examples)
    seq = min(recipe.data.max_length, 256)
    inputs = task.encode(tokenizer, samples, len(samples), seq)
    diffs = {"sparse": parity(sparse, out / "model.onnx", inputs, recipe.threads)}
    dense = load_model(dense_dir, task.auto_class, task.num_labels)
    diffs["dense"] = parity(dense, out / "dense.onnx", inputs, recipe.threads)
    for name, diff in diffs.items():
        if not diff <= recipe.export.atol:
            raise VerificationError(
                f"export: {name} ONNX outputs differ from PyTorch by {diff:.2e} > atol {recipe.export.atol:g}"
            )
    return {
        "path": "export/model.onnx",
        "dense_path": "export/dense.onnx",
        "opset": recipe.export.opset,
        "encoder_sparsity": report["encoder_sparsity"],
        "mask_sparsity": report["mask_sparsity"],
        "tensors_verified": len(report["tensors"]),
        "pattern": recipe.prune.pattern,
        "per_tensor": {
            t["torch_name"]: {
                "onnx_name": t["onnx_name"],
                "onnx_zeros": t["onnx_zeros"],
                "mask_zeros": t["mask_zeros"],
                "numel": t["numel"],
            }
            for t in report["tensors"]
        },
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_dense": diffs["dense"],
        "atol": recipe.export.atol,
        "parity_inputs": {"examples": len(samples), "seq_len": seq},
    }


def _structured(ctx: StageContext, task, dev, tokenizer, compact, dense_dir, pr: dict) -> dict:
    """A compact model: its shapes are the kept structures (weight by weight, in ONNX), and its
    ONNX outputs equal the masked model's (the one trained) and its own."""
    recipe, out = ctx.recipe, ctx.out
    report = verify_structure(compact, out / "model.onnx", pr["widths"])
    samples = task.sample_inputs(dev, recipe.export.parity_examples)
    seq = min(recipe.data.max_length, 256)
    inputs = task.encode(tokenizer, samples, len(samples), seq)
    diffs = {"compact": parity(compact, out / "model.onnx", inputs, recipe.threads)}
    if pr.get("masked_model_dir"):  # trained masked to the end (else the compaction checked the two agree)
        masked = load_model(str(ctx.path("prune", "masked_model_dir")), task.auto_class, task.num_labels)
        diffs["sparse"] = parity(masked, out / "model.onnx", inputs, recipe.threads)
    diffs |= {
        "dense": parity(load_model(dense_dir, task.auto_class, task.num_labels), out / "dense.onnx", inputs,
                        recipe.threads),
    }
    for name, diff in diffs.items():
        if not diff <= recipe.export.atol:
            what = "the masked model's" if name == "sparse" else "PyTorch's"
            raise VerificationError(
                f"export: {name} ONNX outputs differ from {what} by {diff:.2e} > atol {recipe.export.atol:g}"
            )
    members = {}  # a --speedup family: each member below the final target, exported and checked alike
    for member in pr.get("members") or []:
        member_dir = inside(ctx.run_dir, member["model_dir"], "prune record member")
        path = out / "members" / member["name"] / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(member_dir, task, recipe.export.opset, path)
        model = load_model(str(member_dir), task.auto_class, task.num_labels)
        checked = verify_structure(model, path, member["widths"])
        diff = parity(model, path, inputs, recipe.threads)
        if not diff <= recipe.export.atol:
            raise VerificationError(f"export: member {member['name']} ONNX outputs differ from PyTorch's by "
                                    f"{diff:.2e} > atol {recipe.export.atol:g}")
        tokenizer.save_pretrained(path.parent)  # beside it, as for the main model: what `p2d package` ships
        model.config.save_pretrained(path.parent)
        members[member["name"]] = {"path": f"export/members/{member['name']}/model.onnx", "widths": checked["widths"],
                                   "tensors_verified": len(checked["tensors"]), "max_abs_diff": diff,
                                   "bytes": path.stat().st_size, **_initializers(checked["tensors"])}
    import onnx

    size = {k: (out / f).stat().st_size for k, f in (("pruned", "model.onnx"), ("dense", "dense.onnx"))}
    n_params = {k: sum(int(_numel(t)) for t in onnx.load(str(out / f), load_external_data=False).graph.initializer)
                for k, f in (("pruned", "model.onnx"), ("dense", "dense.onnx"))}
    return {
        "path": "export/model.onnx",
        "dense_path": "export/dense.onnx",
        "opset": recipe.export.opset,
        "pattern": M.STRUCTURED,
        "widths": report["widths"],
        "tensors_verified": len(report["tensors"]),
        # what `p2d package` / `p2d verify` record and re-count (a compact model has few zeros left)
        **_initializers(report["tensors"]),
        "bytes": size,
        "parameters": n_params,
        "max_abs_diff": diffs.get("sparse", diffs["compact"]),
        "max_abs_diff_compact": diffs["compact"],
        "max_abs_diff_dense": diffs["dense"],
        "atol": recipe.export.atol,
        "parity_inputs": {"examples": len(samples), "seq_len": seq},
        "members": members,
    }


_ENCODER = "encoder."  # the compact model's weights, named from its encoder module


def _initializers(tensors: list[dict]) -> dict:
    """A compact graph's verified encoder weights as `p2d package` / `p2d verify` record them."""
    return {
        "per_tensor": {
            f"{_ENCODER}{t['torch_name']}.weight": {k: t[k] for k in ("onnx_name", "shape", "numel", "onnx_zeros")}
            | {"mask_zeros": 0}
            for t in tensors
        },
        "encoder_sparsity": sum(t["onnx_zeros"] for t in tensors) / max(1, sum(t["numel"] for t in tensors)),
    }


def _numel(t) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n
