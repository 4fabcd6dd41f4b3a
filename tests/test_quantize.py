"""Sparse + INT8: zeros stay zero in the quantized graph, accuracy re-measured, INT8 benched."""

import json

import numpy as np
import pytest

from prune2deploy.errors import VerificationError
from test_cli import assert_user_error, p2d, p2d_smoke


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("int8") / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, out, "--sparsity", "0.7", "--quantize", "int8")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_int8_keeps_zeros_and_reports_accuracy_and_latency(int8_run):
    rec = json.loads((int8_run / "quantize" / "stage.json").read_text())["result"]
    assert rec["quantize"] == "int8" and rec["tensors"] == 12  # 2 layers x 6 encoder Linears
    assert rec["encoder_sparsity_int8"] >= 0.7 - 1e-6  # rounding may add zeros, never remove them
    val = json.loads((int8_run / "validate" / "stage.json").read_text())["result"]
    assert rec["metrics"]["sparse_fp32_onnx"]["accuracy"] == pytest.approx(
        val["sparse"]["accuracy"]
    )  # same data, same model
    int8, fp32 = rec["metrics"]["sparse_int8"], rec["metrics"]["sparse_fp32_onnx"]
    n = val["sparse"]["eval_examples"]
    assert int8["eval_examples"] == fp32["eval_examples"] == n  # the same questions as validate
    correct = int8["accuracy"] * n / 100
    assert abs(correct - round(correct)) < 1e-6  # a count of right answers out of n, not a made-up number
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 100 * 3 / n  # INT8 flips at most a few borderline answers
    report = json.loads((int8_run / "report.json").read_text())
    assert report["quantize"]["metrics"]["sparse_int8"]
    int8_rows = [r for r in report["bench"] if r["model"] == "sparse-int8"]
    assert int8_rows and all(r["precision"] == "int8" for r in int8_rows)
    # the dense model quantized the same way is a "best dense" candidate: every speedup counts it
    assert rec["metrics"]["dense_int8"]["eval_examples"] == n and (int8_run / "quantize" / "dense.int8.onnx").is_file()
    timed = [r for r in report["bench"] if "p50_ms" in r]
    assert any(r["model"] == "dense-int8" and r["precision"] == "int8" for r in timed)
    from prune2deploy.measure.dense_gate import keeps_gate

    for r in timed:  # the fastest dense row that keeps the run's accuracy gate
        shape = (r["batch_size"], r["seq_len"])
        best = min(
            (x for x in timed if x["model"].startswith("dense") and (x["batch_size"], x["seq_len"]) == shape
             and keeps_gate(x, 0.95)),
            key=lambda x: x["p50_ms"],
        )
        assert r["speedup_vs_best_dense"] == round(best["p50_ms"] / r["p50_ms"], 3)
        assert r["best_dense"] == f"{best['runtime']} {best['model']} ({best['precision']})"
    assert any("p50_ms" in r for r in int8_rows)
    from prune2deploy.graphs.onnx_sparsity import load_initializers

    q = load_initializers(int8_run / "quantize" / "model.int8.onnx")
    assert sum(1 for k, v in q.items() if k.endswith("_quantized") and v.dtype == np.int8) >= 12


def test_a_lost_zero_is_caught(int8_run, tmp_path):
    import onnx
    from onnx import numpy_helper

    from prune2deploy.graphs.int8 import check_zeros_kept

    model = onnx.load(str(int8_run / "quantize" / "model.int8.onnx"))
    init = next(
        t
        for t in model.graph.initializer
        if t.name.endswith("_quantized") and numpy_helper.to_array(t).dtype == np.int8
    )
    arr = numpy_helper.to_array(init).copy()
    arr.flat[int(np.flatnonzero(arr == 0)[0])] = 5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(VerificationError, match="pruned weights became non-zero"):
        check_zeros_kept(
            int8_run / "export" / "model.onnx", tmp_path / "bad.onnx", [init.name.removesuffix("_quantized")]
        )


def test_bad_quantize_value(tmp_path):
    assert_user_error(
        p2d("run", "rotten_tomatoes", "--profile", "smoke", "--quantize", "int4", "--out", tmp_path / "r"),
        "--quantize must be",
    )


def test_package_int8_then_verify(int8_run, tmp_path):
    art = tmp_path / "art"
    res = p2d("package", int8_run, "--out", art, "--int8")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and all(
        v["onnx_name"].endswith("_quantized") for v in manifest["onnx_initializers"].values()
    )
    res = p2d("verify", art)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_user_error(
        p2d("package", int8_run.parent / "nope", "--out", tmp_path / "a2", "--int8"), "not a run dir (no recipe.json)"
    )


def test_two_four_pattern_through_export(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, out, "--sparsity", "0.5", "--pattern", "2:4")
    assert res.returncode == 0, res.stderr[-3000:]
    from prune2deploy.graphs.onnx_sparsity import load_initializers

    rec = json.loads((out / "export" / "stage.json").read_text())["result"]
    assert rec["pattern"] == "2:4" and rec["encoder_sparsity"] == pytest.approx(0.5)
    inits = load_initializers(out / "export" / "model.onnx")
    for t in rec["per_tensor"].values():
        w = inits[t["onnx_name"]]  # ONNX MatMul weights are (in, out): groups of 4 run along axis 0
        assert ((w.reshape(-1, 4, w.shape[1]) != 0).sum(1) <= 2).all()
    assert_user_error(
        p2d(
            "run",
            "rotten_tomatoes",
            "--profile",
            "smoke",
            "--pattern",
            "2:4",
            "--sparsity",
            "0.8",
            "--out",
            tmp_path / "r2",
        ),
        "--sparsity 0.5",
    )
    assert_user_error(
        p2d(
            "run",
            "rotten_tomatoes",
            "--profile",
            "smoke",
            "--pattern",
            "4:2",
            "--sparsity",
            "0.5",
            "--out",
            tmp_path / "r3",
        ),
        "0 < N < M",
    )


def test_static_qdq_int8_keeps_zeros_and_matches_fp32(int8_run, tmp_path):
    import onnx

    from prune2deploy.measure.timing import fixed_inputs
    from prune2deploy.model.load import load_tokenizer
    from prune2deploy.runtimes import onnxruntime as ort_rt
    from prune2deploy.graphs.int8 import check_zeros_kept, quantize_int8_static

    export = int8_run / "export"
    tok = load_tokenizer(str(export))
    texts = [("a quiet, moving film", None), ("dull and far too long", None), ("the cast is wonderful", None)]
    batches = [fixed_inputs(tok, texts, 3, 32), fixed_inputs(tok, texts[::-1], 3, 32)]
    quantize_int8_static(export / "model.onnx", tmp_path / "qdq.onnx", batches)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "qdq.onnx")).graph.node}
    assert {
        "QuantizeLinear",
        "DequantizeLinear",
    } <= ops and "MatMulInteger" not in ops  # QDQ, not the dynamic operators
    rec = json.loads((int8_run / "quantize" / "stage.json").read_text())["result"]
    names = [t["onnx_name"] for t in json.loads((export / "stage.json").read_text())["result"]["per_tensor"].values()]
    zeros = check_zeros_kept(export / "model.onnx", tmp_path / "qdq.onnx", names)
    assert len(zeros["tensors"]) == rec["tensors"] == 12 and zeros["encoder_sparsity_int8"] >= 0.7 - 1e-6
    ref, got = (
        ort_rt.load(export / "model.onnx", 1)(batches[0])[0],
        ort_rt.load(tmp_path / "qdq.onnx", 1)(batches[0])[0],
    )
    assert np.abs(ref - got).max() < 0.5 * (np.abs(ref).max() + 1e-3)  # close to fp32, not equal


def test_matmulinteger_layout_equals_its_per_tensor_qdq_graph(int8_run, tmp_path):
    """DeepSparse's layout: every weight MatMul becomes MatMulInteger → Cast → Mul on the same
    INT8 weights; on ORT it computes exactly what the per-tensor QDQ graph computes."""
    import onnx

    from prune2deploy.measure.timing import fixed_inputs
    from prune2deploy.graphs.int8 import check_zeros_kept, quantize_int8_static
    from prune2deploy.graphs.int8_matmulinteger import to_matmulinteger
    from prune2deploy.model.load import load_tokenizer
    from prune2deploy.runtimes import onnxruntime as ort_rt

    export = int8_run / "export"
    tok = load_tokenizer(str(export))
    texts = [("a quiet, moving film", None), ("dull and far too long", None), ("the cast is wonderful", None)]
    batches = [fixed_inputs(tok, texts, 3, 32)]
    quantize_int8_static(export / "model.onnx", tmp_path / "pt.onnx", batches, per_channel=False)
    assert to_matmulinteger(tmp_path / "pt.onnx", tmp_path / "mmi.onnx") == 12
    nodes = onnx.load(str(tmp_path / "mmi.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("MatMulInteger") == 12
    producer = {o: n.op_type for n in nodes for o in n.output}
    consumers = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    for n in nodes:  # the SparseML shape: QuantizeLinear → MatMulInteger → Cast → Mul, output not re-quantized
        if n.op_type == "MatMulInteger":
            assert producer[n.input[0]] == "QuantizeLinear"
            cast = consumers[n.output[0]]
            assert cast == ["Cast"]
        if n.op_type == "MatMul":  # only attention's activation x activation MatMuls are left
            assert "DequantizeLinear" not in (producer.get(n.input[0]), producer.get(n.input[1]))
        if n.op_type == "Mul" and n.name.endswith("_mmi_rescale"):
            assert "QuantizeLinear" not in consumers.get(n.output[0], [])
    names = [t["onnx_name"] for t in json.loads((export / "stage.json").read_text())["result"]["per_tensor"].values()]
    assert check_zeros_kept(export / "model.onnx", tmp_path / "mmi.onnx", names)["encoder_sparsity_int8"] >= 0.7 - 1e-6
    qdq = ort_rt.load(tmp_path / "pt.onnx", 1)(batches[0])[0]
    mmi = ort_rt.load(tmp_path / "mmi.onnx", 1)(batches[0])[0]
    assert np.abs(qdq - mmi).max() <= 1e-5 * (1 + np.abs(qdq).max())
    # a per-channel graph cannot be expressed with one rescale per MatMul: refused
    quantize_int8_static(export / "model.onnx", tmp_path / "pc.onnx", batches, per_channel=True)
    with pytest.raises(VerificationError, match="only per-tensor INT8"):
        to_matmulinteger(tmp_path / "pc.onnx", tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_fake_quant_keeps_zeros_lands_on_the_int8_grid_and_passes_gradients():
    import torch

    from prune2deploy.train.qat import fake_quant_act, fake_quant_weight

    w = torch.randn(6, 16)
    w[w.abs() < 0.5] = 0.0
    w[0] *= 10  # one row with a larger range: per-tensor and per-channel grids differ
    w.requires_grad_(True)
    for per_channel, s in ((True, w.detach().abs().amax(1, keepdim=True) / 127), (False, w.detach().abs().max() / 127)):
        q = fake_quant_weight(w, per_channel)
        assert torch.equal(q[w == 0], torch.zeros_like(q[w == 0]))
        grid = q.detach() / s  # one scale for the tensor, or one a row: on exactly that INT8 grid
        assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.abs().max() <= 127 + 1e-4
        q.sum().backward()
        assert torch.equal(w.grad, torch.ones_like(w))  # straight-through
        w.grad = None
    assert not torch.allclose(fake_quant_weight(w, True)[1:], fake_quant_weight(w, False)[1:])
    x = torch.linspace(-1, 3, 101)
    xq = fake_quant_act(x, -1.0, 3.0)
    assert (xq - x).abs().max() <= 4.0 / 255 / 2 + 1e-6 and len(torch.unique(xq)) <= 256


def test_qat_fake_quantizes_every_weight_matmul_on_the_calibrated_ranges(tiny_qa):
    """QAT rounds what the static graph rounds: every Linear (the QA head's too), with each input
    range the one min-max calibration computes on the same inputs, held during training."""
    import numpy as np
    import torch

    from prune2deploy.train import qat

    linears = qat.weight_linears(tiny_qa)
    assert "qa_outputs" in linears and any("intermediate" in n for n in linears)
    rng = np.random.default_rng(0)
    batches = [{"input_ids": rng.integers(1000, 2000, (4, 12)).astype(np.int64),
                "attention_mask": np.ones((4, 12), np.int64), "token_type_ids": np.zeros((4, 12), np.int64)}
               for _ in range(3)]
    seen = []
    handle = tiny_qa.qa_outputs.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    ranges = qat.calibrate(tiny_qa, linears, batches)
    handle.remove()
    x = torch.cat([s.flatten() for s in seen])
    assert ranges["qa_outputs"] == (pytest.approx(float(x.min())), pytest.approx(float(x.max())))
    qat.attach(linears, ranges=ranges)
    tiny_qa.train()
    tiny_qa(**{k: torch.from_numpy(v) for k, v in batches[0].items()})
    assert tuple(float(v) for v in tiny_qa.qa_outputs.qat_range) == pytest.approx(ranges["qa_outputs"])  # held
    out = tiny_qa.qa_outputs(torch.full((1, tiny_qa.config.hidden_size), 1e3))  # clamps at the calibrated range
    qat.detach(linears)
    ref = tiny_qa.qa_outputs(torch.full((1, tiny_qa.config.hidden_size), ranges["qa_outputs"][1]))
    assert torch.allclose(out, ref, atol=0.2 * float(ref.detach().abs().max()) + 1e-3)
    assert "forward" not in tiny_qa.qa_outputs.__dict__


def test_qat_then_static_int8_pipeline(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    res = p2d_smoke(
        "rotten_tomatoes",
        tiny_model_dir,
        out,
        "--sparsity",
        "0.7",
        "--quantize",
        "int8-static",
        "--set",
        "export.qat_epochs=1",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((out / "quantize" / "stage.json").read_text())["result"]
    assert (
        rec["quantize"] == "int8-static"
        and rec["qat"]["steps"] > 0
        and rec["qat"]["weights"] == "per_tensor"  # the rounding of the graph package ships by default
        and abs(rec["qat"]["encoder_sparsity"] - 0.7) < 1e-3
    )
    assert rec["tensors"] == 12 and rec["encoder_sparsity_int8"] >= 0.7 - 1e-6
    assert {"sparse_int8", "sparse_fp32_onnx", "sparse_qat_fp32_onnx", "sparse_int8_mmi", "dense_int8_mmi"} <= set(
        rec["metrics"]
    )
    zeros = json.loads((out / "quantize" / "quantize.json").read_text())["zeros"]
    assert zeros["mmi"]["encoder_sparsity_int8"] >= 0.7 - 1e-6 and len(zeros["mmi"]["tensors"]) == 12
    report = json.loads((out / "report.json").read_text())
    for model in ("sparse-int8", "sparse-int8-mmi", "dense-int8-mmi"):
        assert any(r["model"] == model and "p50_ms" in r for r in report["bench"]), model
    for layout, label in ((None, "sparse-int8-mmi"), ("qdq", "sparse-int8")):  # default: DeepSparse's layout
        art = tmp_path / f"art-{layout}"
        res = p2d("package", out, "--out", art, "--int8", *(["--layout", layout] if layout else []))
        assert res.returncode == 0, res.stderr
        manifest = json.loads((art / "manifest.json").read_text())
        assert len(manifest["onnx_initializers"]) == 12 and manifest["measured_as"] == label
        ops = {n.op_type for n in __import__("onnx").load(str(art / "model.onnx")).graph.node}
        assert ("MatMulInteger" in ops) == (layout is None)
        res = p2d("verify", art)
        assert res.returncode == 0, res.stdout + res.stderr
    assert_user_error(p2d("package", out, "--out", tmp_path / "x", "--int8", "--layout", "mmi"), "--layout must be")
    assert_user_error(p2d("package", out, "--out", tmp_path / "y", "--layout", "qdq"), "--layout applies to --int8")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    bad = p2d_smoke(
        "rotten_tomatoes",
        tiny_model_dir,
        tmp_path / "r2",
        "--quantize",
        "int8",
        "--set",
        "export.qat_epochs=1",
    )
    assert_user_error(bad, "needs --quantize int8-static")


@pytest.mark.parametrize("method", ["gmp", "obert"])
def test_block4_pattern_through_export(tmp_path, tiny_model_dir, method):
    """Groups of 4 consecutive input weights pruned together (GMP: group norm; oBERT: joint
    saliency and the group OBS update), checked at the end of pruning and again in the ONNX graph."""
    out = tmp_path / "run"
    extra = ["--set", "prune.options.obert.block_size=48"] if method == "obert" else []
    res = p2d(
        "run",
        "rotten_tomatoes",
        "--profile",
        "smoke",
        "--sparsity",
        "0.7",
        "--pattern",
        "block4",
        "--method",
        method,
        "--model",
        tiny_model_dir,
        "--out",
        out,
        *extra,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    from prune2deploy.graphs.onnx_sparsity import load_initializers

    rec = json.loads((out / "export" / "stage.json").read_text())["result"]
    assert rec["pattern"] == "block4" and abs(rec["encoder_sparsity"] - 0.7) < 1e-3
    inits = load_initializers(out / "export" / "model.onnx")
    for t in rec["per_tensor"].values():
        w = inits[t["onnx_name"]]  # ONNX MatMul weights are (in, out): groups of 4 run along axis 0
        zeros_per_group = (w.reshape(-1, 4, w.shape[1]) == 0).sum(1)
        assert bool(((zeros_per_group == 0) | (zeros_per_group == 4)).all())  # whole groups, never part of one


def test_block_pattern_bad_input(tmp_path, tiny_model_dir):
    assert_user_error(
        p2d("run", "rotten_tomatoes", "--profile", "smoke", "--pattern", "blockx", "--out", tmp_path / "a"),
        "'blockK' needs a whole K",
    )
    # the tiny model's dims (32, 64) are not multiples of 3: the pattern cannot be laid exactly
    assert_user_error(
        p2d_smoke("rotten_tomatoes", tiny_model_dir, tmp_path / "b", "--pattern", "block3"),
        "--pattern block3:",
        "not a multiple of 3",
    )
    assert_user_error(p2d_smoke(
        "rotten_tomatoes",
        tiny_model_dir,
        tmp_path / "c",
        "--pattern",
        "block4",
        "--method",
        "obert",
    ), "block_size a multiple of 4, got 50")
    assert not (tmp_path / "c").exists()  # refused with the recipe, before any stage ran


def test_percentile_calibration_cuts_outliers_minmax_keeps(int8_run, tmp_path):
    """`export.calibration`: a percentile range (the outermost 1% cut) is never wider than
    min-max's, and clearly narrower somewhere; min-max spans every value it saw."""
    import onnx
    from onnx import numpy_helper

    from prune2deploy.measure.timing import fixed_inputs
    from prune2deploy.graphs.int8 import quantize_int8_static
    from prune2deploy.model.load import load_tokenizer

    export = int8_run / "export"
    tok = load_tokenizer(str(export))
    texts = [("a quiet, moving film", None), ("dull and far too long", None), ("the cast is wonderful", None)]
    batches = [fixed_inputs(tok, texts, 3, 32), fixed_inputs(tok, texts[::-1], 3, 32)]

    def input_scales(path):
        g = onnx.load(str(path)).graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        quantized = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
        return {n.input[0]: float(inits[n.input[1]]) for n in quantized}

    quantize_int8_static(export / "model.onnx", tmp_path / "mm.onnx", batches, per_channel=False)
    quantize_int8_static(
        export / "model.onnx", tmp_path / "pc.onnx", batches, per_channel=False, calibration="percentile-99"
    )
    mm, pc = input_scales(tmp_path / "mm.onnx"), input_scales(tmp_path / "pc.onnx")
    assert mm.keys() == pc.keys() and len(mm) == 8  # 2 layers x 4 inputs (Q, K and V share one)
    assert all(pc[k] <= mm[k] * (1 + 1e-6) for k in mm) and any(pc[k] < 0.9 * mm[k] for k in mm)
    with pytest.raises(ValueError, match="minmax or percentile-P"):
        quantize_int8_static(export / "model.onnx", tmp_path / "x.onnx", batches, calibration="entropy")


def test_percentile_calibration_takes_at_most_64_inputs():
    """ORT's histogram calibrators keep every input's intermediate outputs: a percentile takes at
    most 64 inputs (256 squad inputs were killed for memory on 24 GiB); min-max takes all."""
    from prune2deploy.graphs.int8 import calibration_count

    assert calibration_count("minmax", 256) == 256
    assert calibration_count("percentile-99.999", 256) == 64
    assert calibration_count("percentile-99.9", 32) == 32
