"""The bench's INT8 row check (by task accuracy on the runtime, not logits) and the summary's
verdict (what to ship on this machine) — on made-up rows, no timing."""

import io

import numpy as np
import pytest
from rich.console import Console

from prune2deploy.measure import bench_rows as latency
from prune2deploy.recipe import BenchConfig
from prune2deploy.report.summary import summary_notes, summary_table, verdict
from prune2deploy.runtimes.registry import Runtime


def _rt(name, shift):
    """A runtime whose outputs are the reference's plus `shift` (how it requantizes)."""
    def bench(path, inputs, threads, warmup, iters, min_time_s):
        return [1.0, 1.0, 1.0], [np.full((1, 4), 2.0 + shift, np.float32)]
    return Runtime(name, "fp32", "onnx", lambda: True, lambda: "1", bench)


@pytest.fixture
def two_runtimes(monkeypatch):
    rts = [_rt("onnxruntime", 0.0), _rt("openvino", 1.8)]  # logits 1.8 apart, more than INT8_RELATIVE allows
    monkeypatch.setattr(latency, "resolve", lambda names: (rts, []))
    return rts


def _bench(accuracy):
    models = {"dense-int8": {"onnx": "d.onnx", "precision": "int8"}}
    cfg = BenchConfig(batch_sizes=(1,), seq_lens=(8,), accuracy_tolerance=1.0)
    rows, _ = latency.bench_models(models, lambda b, s: {}, cfg, 1, None,
                                   lambda label, x: [np.full((1, 4), 2.0, np.float32)], accuracy)
    return {r["runtime"]: r for r in rows}


def test_int8_row_is_timed_when_its_accuracy_holds_though_its_logits_differ(two_runtimes):
    rows = _bench(lambda label, rt: {"onnxruntime": 56.0, "openvino": 55.4}[rt])
    ov = rows["openvino"]
    assert "p50_ms" in ov and ov["accuracy"] == 55.4 and ov["accuracy_onnxruntime"] == 56.0
    assert ov["max_abs_diff"] == pytest.approx(1.8)


def test_int8_row_is_refused_when_its_accuracy_is_off(two_runtimes):
    rows = _bench(lambda label, rt: {"onnxruntime": 56.0, "openvino": 40.0}[rt])
    assert "p50_ms" not in rows["openvino"] and "task metric 40.00 on openvino" in rows["openvino"]["error"]
    assert "p50_ms" in rows["onnxruntime"]


def test_without_an_accuracy_the_logits_check_stays(two_runtimes):
    rows = _bench(lambda label, rt: None)
    assert "p50_ms" not in rows["openvino"] and "outputs differ" in rows["openvino"]["error"]


def _row(runtime, model, b, ms, precision="fp32", **kw):
    return {"runtime": runtime, "model": model, "batch_size": b, "seq_len": 128, "p50_ms": ms,
            "precision": precision, **kw}


def _report(rows):
    latency.add_speedups(rows)
    rep = {"task": "squad", "method": "ziplm", "target_sparsity": 0.0, "target_speedup": 2.0,
           "profile": "default", "metric": "f1", "metrics": {"dense": {"f1": 60.0}, "sparse": {"f1": 58.0}},
           "quantize": {"metrics": {"dense_int8": {"f1": 54.0}, "sparse_int8": {"f1": 57.5}}},
           "bench": rows, "bench_skipped": []}
    rep["verdict"] = verdict(rep, 0.95)
    return rep


def test_verdict_ships_the_fastest_artifact_that_keeps_the_gate():
    rows = []
    for b, k in ((1, 1), (16, 12)):
        rows += [
            _row("openvino-bf16", "dense", b, 4.7 * k, "bf16"),
            _row("openvino", "dense-int8", b, 4.0 * k, "int8"),  # fastest dense, but 90% of dense F1
            _row("openvino-bf16", "sparse", b, 2.4 * k, "bf16", structured=True),
            _row("openvino", "sparse-int8", b, 2.0 * k, "int8"),
            _row("deepsparse", "sparse", b, 1.5 * k),  # faster, and meets the gate: its licence is said
        ]
    rep = _report(rows)
    v = rep["verdict"]
    # DeepSparse is faster and keeps the gate, but its licence forbids production: never the choice
    assert (v["runtime"], v["model"]) == ("openvino", "sparse-int8") and v["shipped"]
    assert v["speedup_vs_best_dense"]["b1s128"] == pytest.approx(4.0 / 2.0, abs=1e-3)  # vs dense INT8, timed
    assert "faster for evaluation only" in v["line"] and v["evaluation_only_faster"]["runtime"] == "deepsparse"
    assert v["retained"] == pytest.approx(57.5 / 60, abs=1e-4)
    v = verdict({**_report(rows), "quantize": {"metrics": {"sparse_int8": {"f1": 50.0}}}}, 0.95)
    assert (v["runtime"], v["model"]) == ("openvino-bf16", "sparse")  # the INT8 graph misses the gate


def test_verdict_compares_each_accuracy_with_dense_on_the_same_examples():
    rows = []
    for b, k in ((1, 1), (16, 12)):
        rows += [
            _row("openvino-bf16", "dense", b, 4.7 * k, "bf16"),
            # scored on 200 dev examples where dense fp32 scores 50.0: 49.0 is 98% of it, though only
            # 82% of the 60.0 dense scores on the whole eval set
            _row("openvino-bf16", "sparse", b, 2.4 * k, "bf16", accuracy=49.0, accuracy_dense=50.0,
                 accuracy_examples=200),
            # 57.5 of the whole set's 60.0 would pass; on its own 200 examples it is 86% of dense
            _row("openvino", "sparse-int8", b, 2.0 * k, "int8", accuracy=43.0, accuracy_dense=50.0,
                 accuracy_examples=200),
        ]
    v = _report(rows)["verdict"]
    assert (v["runtime"], v["model"]) == ("openvino-bf16", "sparse")
    assert v["retained"] == pytest.approx(0.98) and v["accuracy_examples"] == 200
    assert "of dense 50.00 on the same 200 dev examples" in v["line"]


def test_nothing_on_a_production_runtime_is_not_a_ship_line():
    rows = []
    for b in (1, 16):
        rows += [_row("onnxruntime", "dense", b, 10.0 * b), _row("deepsparse", "sparse", b, 3.0 * b)]
    rep = _report(rows)
    rep["metrics"]["dense"]["f1"] = 70.0  # sparse (58) misses the gate; dense itself ships
    v = verdict(rep, 0.95)
    assert (v["runtime"], v["model"]) == ("onnxruntime", "dense") and v["shipped"]
    v = verdict({**rep, "bench": [r for r in rows if r["runtime"] == "deepsparse"]}, 0.95)
    assert v is None or not v["shipped"]


def test_summary_fits_100_columns_and_ends_with_the_verdict():
    rows = []
    for b in (1, 16):
        rows += [_row("openvino-bf16", "dense", b, 4.7 * b, "bf16"),
                 _row("openvino-bf16", "sparse", b, 2.4 * b, "bf16"),
                 _row("onnxruntime", "dense", b, 15.3 * b), _row("onnxruntime", "sparse", b, 8.0 * b),
                 _row("deepsparse", "sparse-int8-mmi", b, 3.0 * b, "int8"),
                 _row("deepsparse", "dense-int8-mmi", b, 9.0 * b, "int8")]
    rep = _report(rows)
    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=False)
    console.print(summary_table(rep))
    table = buf.getvalue().splitlines()
    assert table and max(len(line) for line in table) <= 100
    assert sum("openvino-bf16" in line for line in table) == 2  # one line per pruned row, no wrapping
    notes = summary_notes(rep)
    assert notes[-1].startswith("ship: ") and rep["verdict"]["shipped"] and any("evaluation only" in n for n in notes)


def test_the_best_dense_option_keeps_the_gate_and_a_faster_one_under_it_is_named():
    """A dense INT8 graph that loses more than the gate allows is timed and shown, but it is not
    the best dense option a speedup is measured against (measure.dense_gate)."""
    rows = []
    for b, k in ((1, 1), (16, 12)):
        rows += [
            _row("openvino-bf16", "dense", b, 9.0 * k, "bf16", accuracy=60.0, accuracy_dense=60.0),
            # the fastest dense row, at 89% of dense F1 on the same examples: under a 95% gate
            _row("openvino-bf16", "dense-int8", b, 6.0 * k, "int8", accuracy=53.4, accuracy_dense=60.0),
            _row("onnxruntime", "dense-int8", b, 8.0 * k, "int8", accuracy=58.2, accuracy_dense=60.0),  # 97%
            _row("openvino-bf16", "sparse", b, 3.0 * k, "bf16", structured=True, accuracy=58.0,
                 accuracy_dense=60.0),
        ]
    latency.add_speedups(rows, 0.95)
    sparse = next(r for r in rows if r["model"] == "sparse" and r["batch_size"] == 1)
    assert sparse["best_dense"] == "onnxruntime dense-int8 (int8)"  # the fastest that keeps the gate
    assert sparse["speedup_vs_best_dense"] == pytest.approx(8.0 / 3.0, abs=1e-3)
    assert sparse["fastest_dense"].startswith("openvino-bf16 dense-int8 (int8), 89.0%")
    assert sparse["speedup_vs_fastest_dense"] == pytest.approx(2.0)
    latency.add_speedups(rows)  # no gate (`p2d bench FILE`): the fastest dense row, as before
    assert sparse["best_dense"] == "openvino-bf16 dense-int8 (int8)" and "fastest_dense" not in sparse
    latency.add_speedups(rows, 0.95)
    rep = {"task": "squad", "method": "ziplm", "target_sparsity": 0.0, "target_speedup": 2.0, "profile": "default",
           "metric": "f1", "metrics": {"dense": {"f1": 60.0}, "sparse": {"f1": 58.0}}, "bench": rows,
           "bench_skipped": []}
    v = verdict(rep, 0.95)
    assert (v["runtime"], v["model"]) == ("openvino-bf16", "sparse")
    assert v["speedup_vs_best_dense"] == {"b1s128": pytest.approx(2.667, abs=1e-3), "b16s128": pytest.approx(2.667,
                                                                                                         abs=1e-3)}
    assert v["speedup_vs_fastest_dense"]["b1s128"] == pytest.approx(2.0)
    assert "b1 openvino-bf16 dense-int8 (int8), 89.0% of dense accuracy (2.00x against it)" in v["line"]
    assert "b16 openvino-bf16 dense-int8" in v["line"]
