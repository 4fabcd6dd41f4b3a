"""Runtimes: registry rules, DeepSparse through its own environment, OpenVINO, parity."""

import stat

import numpy as np
import pytest
import torch

from prune2deploy.errors import UserError
from prune2deploy.runtimes import deepsparse as ds
from prune2deploy.runtimes import onnxruntime as ort_rt
from prune2deploy.runtimes.registry import get_runtime, resolve
from tests.test_cli import assert_user_error, p2d


@pytest.fixture(scope="module")
def sparse_onnx(tmp_path_factory):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from prune2deploy.model.load import resolve_model
    from prune2deploy.pruning import gmp
    from prune2deploy.pruning import masks as M
    from prune2deploy.graphs.onnx_export import export_onnx
    from prune2deploy.tasks.registry import get_task
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        tiny_config(num_labels=2, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    ).eval()
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    gmp.prune_step(mods, 0.9, "global")
    d = tmp_path_factory.mktemp("rt")
    model.save_pretrained(d / "hf")
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(d / "hf")
    export_onnx(d / "hf", get_task("rotten_tomatoes"), 14, d / "model.onnx")
    return d / "model.onnx"


def _inputs(b=2, s=32):
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, 2000, (b, s)).astype(np.int64),
        "attention_mask": np.ones((b, s), np.int64),
        "token_type_ids": np.zeros((b, s), np.int64),
    }


def test_registry_rules():
    with pytest.raises(UserError, match="unknown runtime 'tensorflow'"):
        get_runtime("tensorflow")
    chosen, skipped = resolve(("auto",))
    names = [r.name for r in chosen]
    assert "onnxruntime" in names and set(names).isdisjoint(skipped)
    assert "onnxruntime-cuda" in skipped or torch.cuda.is_available()
    if "onnxruntime-cuda" in skipped:  # asked for by name and missing: an error, not a skip
        with pytest.raises(UserError, match="not installed"):
            resolve(("onnxruntime-cuda",))


def test_deepsparse_is_installed_by_bootstrap():
    assert ds.available(), f"DeepSparse env missing at {ds.python()} (scripts/bootstrap makes it)"
    assert ds.version().startswith("1.8")


def test_deepsparse_fixed_shapes_and_parity(sparse_onnx):
    x = _inputs()
    import hashlib

    before = hashlib.sha256(sparse_onnx.read_bytes()).hexdigest()
    times, outputs = ds.bench(sparse_onnx, x, 2, 1, 3, 0.0)
    ref = ort_rt.load(sparse_onnx, 2)(x)
    assert len(times) == 3  # min_time 0: exactly the iterations asked for, each timed
    assert np.abs(outputs[0] - ref[0]).max() < 1e-3
    assert (
        hashlib.sha256(sparse_onnx.read_bytes()).hexdigest() == before
    )  # DeepSparse got a copy, the original is intact
    import onnx

    onnx.checker.check_model(str(sparse_onnx))


def test_deepsparse_fallback_fails_loudly(sparse_onnx, tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = -c ]; then echo 1.8.0; exit 0; fi\n'
        "echo 'DeepSparse Optimized runtime disabled - Detected dynamic input input_ids dim 1' >&2\nexit 0\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("P2D_DEEPSPARSE_PYTHON", str(fake))
    ds._probe.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="fell back"):
            ds.bench(sparse_onnx, _inputs(), 2, 0, 1, 0.0)
    finally:
        ds._probe.cache_clear()


def test_openvino_fp32_matches_ort(sparse_onnx):
    rt = get_runtime("openvino")
    x = _inputs()
    times, outputs = rt.bench(sparse_onnx, x, 2, 1, 3, 0.0)
    ref = ort_rt.load(sparse_onnx, 2)(x)
    assert np.abs(outputs[0] - ref[0]).max() < 1e-3 and len(times) >= 3


def test_openvino_sparse_on_fp32_weights_says_not_engaged(sparse_onnx):
    """The compiled model's runtime info names each weight layer's kernel; fp32 weights never
    get OpenVINO's sparse decompression (INT8 on AMX only), so the row is refused, not timed."""
    from prune2deploy.runtimes.openvino import fully_connected_kernels

    import openvino as ov

    kernels = fully_connected_kernels(ov.Core().compile_model(str(sparse_onnx), "CPU"))
    assert kernels and not any("sparse" in k for k in kernels)
    with pytest.raises(RuntimeError, match="sparse weights not engaged: its FullyConnected layers run "):
        get_runtime("openvino-sparse").bench(sparse_onnx, _inputs(), 2, 1, 3, 0.0)


def test_bench_any_onnx_file_cli(sparse_onnx, tmp_path):
    res = p2d(
        "bench",
        sparse_onnx,
        "--dense",
        sparse_onnx,
        "--runtime",
        "onnxruntime,deepsparse",
        "--batch-sizes",
        "1",
        "--seq-lens",
        "32",
        "--out",
        tmp_path / "b",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    rows = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert {(r["runtime"], r["model"]) for r in rows} == {
        ("onnxruntime", "dense"),
        ("onnxruntime", "sparse"),
        ("deepsparse", "dense"),
        ("deepsparse", "sparse"),
    }
    assert all("p50_ms" in r and r["max_abs_diff"] < 1e-3 for r in rows)
    assert all(r["speedup_vs_best_dense"] is not None for r in rows)
    assert (tmp_path / "b" / "bench.md").read_text().count("\n") == 2 + len(rows)


def test_bench_bad_inputs(sparse_onnx, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    assert_user_error(p2d("bench", bad), "not a readable ONNX model")
    assert_user_error(p2d("bench", sparse_onnx, "--runtime", "tensorflow"), "unknown runtime 'tensorflow'")
    assert_user_error(
        p2d("bench", sparse_onnx, "--seq-lens", "600", "--runtime", "onnxruntime"), "cannot run on inputs"
    )
    assert_user_error(p2d("bench", tmp_path / "nope.onnx"), "ONNX file not found")


def test_a_sparse_row_on_a_runtime_without_sparse_kernels_is_flagged_not_sold_as_a_speedup():
    from prune2deploy.measure.bench_rows import NO_SPARSE_KERNEL, add_speedups, markdown

    def row(runtime, model, p50):
        return {
            "runtime": runtime,
            "precision": "fp32",
            "model": model,
            "batch_size": 1,
            "seq_len": 128,
            "p50_ms": p50,
            "p90_ms": p50,
            "p99_ms": p50,
            "throughput": 1000 / p50,
        }

    rows = [
        row("torch-cuda", "dense", 3.0),
        row("torch-cuda", "sparse", 2.0),
        row("deepsparse", "dense", 9.0),
        row("deepsparse", "sparse", 4.0),
    ]
    add_speedups(rows)
    assert [r.get("sparse_kernel") for r in rows] == [None, False, None, True]
    table = markdown(rows).splitlines()
    assert "1.50x" + NO_SPARSE_KERNEL in table[3]  # torch-cuda sparse: 3.0 / 2.0 is noise
    assert NO_SPARSE_KERNEL not in table[5] and "2.25x" in table[5]


def test_an_int8_sparse_row_is_not_flagged_against_its_runtimes_fp32_dense_row():
    # INT8 is real work saved, whatever the zeros: the note is for rows at their dense row's precision
    from prune2deploy.measure.bench_rows import NO_SPARSE_KERNEL, add_speedups, markdown

    rows = [
        {"runtime": "onnxruntime", "precision": p, "model": m, "batch_size": 1, "seq_len": 128,
         "p50_ms": t, "p90_ms": t, "p99_ms": t, "throughput": 1000 / t}
        for p, m, t in (("fp32", "dense", 20.0), ("int8", "sparse-int8", 8.0), ("fp32", "sparse", 19.0))
    ]
    add_speedups(rows)
    assert [r.get("sparse_kernel") for r in rows] == [None, None, False]
    table = markdown(rows).splitlines()
    assert NO_SPARSE_KERNEL not in table[3] and "2.50x" in table[3]
    assert NO_SPARSE_KERNEL in table[4]


def test_openvino_bf16_is_timed_only_where_the_cpu_runs_bf16(sparse_onnx):
    """On a CPU without bf16 OpenVINO runs f32 under the bf16 hint: that row would repeat the
    fp32 one under a bf16 label, so it is refused; where the CPU has bf16 it is timed."""
    import openvino as ov

    rt = get_runtime("openvino-bf16")
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        times, outputs = rt.bench(sparse_onnx, _inputs(), 2, 1, 3, 0.0)
        assert len(times) >= 3 and np.isfinite(outputs[0]).all()
    else:
        with pytest.raises(RuntimeError, match="bf16 not engaged: this CPU has no bf16 support, it runs f32"):
            rt.bench(sparse_onnx, _inputs(), 2, 1, 3, 0.0)


def test_the_summary_names_a_cpu_runtime_the_bench_skipped_and_how_to_get_it():
    from rich.console import Console

    from prune2deploy.report.summary import summary_notes, summary_table

    report = {
        "task": "squad", "method": "gmp", "target_sparsity": 0.8, "profile": "default", "metric": "f1",
        "metrics": {"dense": {"f1": 60.0}, "sparse": {"f1": 57.0}}, "sparsity": {}, "onnx": {}, "bench": [],
        "bench_skipped": ["deepsparse", "onnxruntime-cuda"],
    }
    console = Console(width=400, record=True)
    console.print(summary_table(report))
    text = console.export_text() + "\n".join(summary_notes(report))  # the lines under the table
    assert "deepsparse: not installed here (scripts/bootstrap makes .venv-deepsparse" in text
    assert "onnxruntime-cuda" not in text  # a GPU runtime missing on a CPU machine is no news
    report["bench_skipped"] = []
    console = Console(width=400, record=True)
    console.print(summary_table(report))
    assert "not benched" not in console.export_text() + "\n".join(summary_notes(report))
