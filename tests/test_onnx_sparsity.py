import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from prune2deploy.errors import VerificationError
from prune2deploy.graphs.onnx_sparsity import require_ok, verify
from prune2deploy.pruning import gmp
from prune2deploy.pruning import masks as M
from prune2deploy.graphs.onnx_export import export_onnx
from prune2deploy.tasks.registry import get_task


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from transformers import AutoTokenizer, BertForQuestionAnswering

    from prune2deploy.model.load import resolve_model
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config()).eval()
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    gmp.prune_step(mods, 0.7, "global")
    d = tmp_path_factory.mktemp("sparse")
    model.save_pretrained(d / "model")
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(d / "model")
    export_onnx(d / "model", get_task("squad"), 14, d / "model.onnx")
    params = dict(model.named_parameters())
    masks = {k: v.numpy() for k, v in M.get_masks(mods).items()}
    weights = {k: params[k].detach().numpy() for k in masks}
    return d / "model.onnx", weights, masks


def test_verify_passes_tensor_by_tensor(exported):
    path, weights, masks = exported
    rep = verify(path, weights, masks)
    assert rep["ok"], [t for t in rep["tensors"] if not t["ok"]]
    assert len(rep["tensors"]) == 12
    assert rep["encoder_sparsity"] == pytest.approx(0.7, abs=1e-4)  # round(0.7 * 16384) zeros
    for t in rep["tensors"]:
        assert t["onnx_zeros"] == t["mask_zeros"]
    require_ok(rep, "x")


def test_verify_fails_when_a_pruned_weight_is_nonzero_in_onnx(exported, tmp_path):
    path, weights, masks = exported
    model = onnx.load(str(path))
    # find the initializer of the first encoder weight (stored transposed) and revive a zero
    name0 = next(iter(weights))
    target = weights[name0].T
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.shape == target.shape and np.array_equal(arr, target):
            arr = arr.copy()
            idx = np.argwhere(arr == 0)[0]
            arr[tuple(idx)] = 0.5
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            break
    else:
        pytest.fail("initializer not found")
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    rep = verify(bad, weights, masks)
    assert not rep["ok"]
    failed = [t for t in rep["tensors"] if not t["ok"]]
    assert [t["torch_name"] for t in failed] == [name0]
    with pytest.raises(VerificationError, match=name0.replace(".", r"\.")):
        require_ok(rep, "bad.onnx")


def test_verify_fails_when_masks_disagree(exported):
    path, weights, masks = exported
    name0 = next(iter(masks))
    masks2 = dict(masks)
    m = masks[name0].copy()
    m[np.argwhere(m)[0][0], np.argwhere(m)[0][1]] = False  # claim a kept weight was pruned
    masks2[name0] = m
    rep = verify(path, weights, masks2)
    assert not rep["ok"]


def test_verify_through_qkv_concatenation(exported, tmp_path):
    """ORT's optimizer concatenates Q, K, V into one tensor: zeros must still be found."""
    path, weights, masks = exported
    model = onnx.load(str(path))
    names = [k for k in weights if ".layer.0.attention.self." in k]
    parts = []
    drop = set()
    for k in names:
        t = weights[k].T
        for init in model.graph.initializer:
            if np.array_equal(numpy_helper.to_array(init), t):
                parts.append(t)
                drop.add(init.name)
                break
    fused = numpy_helper.from_array(np.concatenate(parts, axis=1), "qkv_fused")
    keep = [i for i in model.graph.initializer if i.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + [fused])
    p = tmp_path / "fused.onnx"
    onnx.save(model, str(p))
    sub_w = {k: weights[k] for k in names}
    rep = verify(p, sub_w, {k: masks[k] for k in names})
    assert rep["ok"]
    assert rep["encoder_sparsity"] == pytest.approx(1 - np.mean([masks[k].mean() for k in names]), abs=1e-6)


def test_fully_pruned_matrices_are_followed_through_the_graph(tmp_path, tiny_qa):
    """Whole matrices at zero (what structured pruning and sparsity 0.999999 make) are identical
    initializers the exporter may merge: each weight is found through its MatMul node, not by
    content, and the check passes with every zero counted."""
    import torch

    from prune2deploy.graphs.onnx_export import export_onnx, verify_against_masks
    from prune2deploy.pruning import masks as M
    from prune2deploy.tasks.registry import get_task

    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    masks = {k: torch.ones_like(v) for k, v in M.get_masks(mods).items()}
    for name in list(masks)[:-1]:  # every matrix but one pruned whole: all-zero, most of them the same shape
        masks[name] = torch.zeros_like(masks[name])
    M.set_masks(mods, masks)
    d = tmp_path / "m"
    tiny_qa.save_pretrained(d)
    export_onnx(d, get_task("squad"), 14, tmp_path / "model.onnx")
    report = verify_against_masks(tiny_qa, M.get_masks(mods), tmp_path / "model.onnx")
    assert report["ok"]
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert report["encoder_sparsity"] == zeros / sum(m.numel() for m in masks.values())
    assert all(t["onnx_zeros"] == t["mask_zeros"] for t in report["tensors"])
