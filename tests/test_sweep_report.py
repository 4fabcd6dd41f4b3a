"""`p2d sweep` on a sentence-pair task (tiny model, GLUE-layout files), then `p2d report`."""

import json
import shutil
import subprocess

import pytest

from test_cli import assert_user_error, p2d
from test_tasks import write_tsv

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from prune2deploy.model.load import resolve_model

    root = tmp_path_factory.mktemp("sweep")
    model = root / "tiny-bert"
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    BertForMaskedLM(
        BertConfig(
            vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(model)
    tok.save_pretrained(model)
    h = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    rows = [
        [i % 2, i, i + 1, f"the cat sat on mat number {i}", f"a cat was sitting on mat {i if i % 2 else i + 7}"]
        for i in range(40)
    ]
    write_tsv(root / "glue" / "MRPC" / "train.tsv", h, rows[:32])
    write_tsv(root / "glue" / "MRPC" / "dev.tsv", h, rows[32:])
    args = [
        "sweep",
        "mrpc",
        "--profile",
        "smoke",
        "--sparsity",
        "0.5,0.8",
        "--method",
        "gmp",
        "--model",
        model,
        "--data-dir",
        root / "glue",
        "--root",
        root / "runs",
    ]
    first = p2d(*args)
    records = {p: p.read_text() for p in (root / "runs").glob("mrpc-*/*/stage.json")}
    again = p2d(*args)
    return root, first, again, records


def test_sweep_runs_every_point_and_resumes(sweep):
    root, first, again, records = sweep
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((root / "runs" / "sweep-mrpc-smoke.json").read_text())
    assert [(p["method"], p["sparsity"], p["status"]) for p in summary["points"]] == [
        ("gmp", 0.5, "done"),
        ("gmp", 0.8, "done"),
    ]
    for s in ("0.5", "0.8"):
        rep = json.loads((root / "runs" / f"mrpc-gmp-{s}" / "report.json").read_text())
        assert (
            abs(rep["sparsity"]["encoder"] - float(s)) < 1e-3 and abs(rep["onnx"]["encoder_sparsity"] - float(s)) < 1e-3
        )
        assert "f1" in rep["metrics"]["sparse"]  # MRPC reports accuracy and F1
    # one teacher trained, reused by the second point (same cache key)
    t1 = json.loads((root / "runs" / "mrpc-gmp-0.5" / "teacher" / "stage.json").read_text())["result"]
    t2 = json.loads((root / "runs" / "mrpc-gmp-0.8" / "teacher" / "stage.json").read_text())["result"]
    assert t1["model_dir"] == t2["model_dir"] and t2["cached"] is True
    assert again.returncode == 0, again.stderr[-3000:]
    from prune2deploy.run import STAGES

    assert len(records) == 2 * len(STAGES)  # every stage of both points, none redone by the second sweep
    assert all(p.read_text() == text for p, text in records.items())


def test_sweep_bad_input(tmp_path):
    assert_user_error(p2d("sweep", "mrpc", "--sparsity", "0.5,abc", "--root", tmp_path), "expected a number")
    assert_user_error(
        p2d("sweep", "mrpc", "--sparsity", "0.5,1.0", "--profile", "smoke", "--data-dir", tmp_path, "--root", tmp_path),
        "[0, 1)",
    )
    assert_user_error(
        p2d("sweep", "mrpc", "--method", "gmp,nope", "--profile", "smoke", "--root", tmp_path), "unknown method 'nope'"
    )
    assert not list(tmp_path.glob("mrpc-*"))


def test_report_html_with_charts(sweep, tmp_path):
    root, first, *_ = sweep
    assert first.returncode == 0
    out = tmp_path / "rep" / "report.html"
    res = p2d("report", root / "runs" / "mrpc-gmp-0.5", root / "runs" / "mrpc-gmp-0.8", "--out", out)
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert page.count('<img class="chart"') == 3 and "data:image/png;base64," in page
    for name in ("metric_vs_sparsity", "latency_vs_sparsity", "pareto"):
        png = tmp_path / "rep" / f"report-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "mrpc-gmp-0.8" in page and "onnxruntime" in page
    assert_user_error(p2d("report", tmp_path / "nope", "--out", out), "no report.json")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(sweep, tmp_path):
    root, first, *_ = sweep
    out = tmp_path / "report.html"
    assert p2d("report", root / "runs" / "mrpc-gmp-0.5", root / "runs" / "mrpc-gmp-0.8", "--out", out).returncode == 0
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'data-charts-rendered="3/3"' in dom, dom[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10000


def test_pareto_front_keeps_only_undominated_points():
    from prune2deploy.report.html import pareto

    pts = [(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (0.5, 40.0), (2.5, 60.0), (1.0, 45.0)]
    assert pareto(pts) == [(0.5, 40.0), (1.0, 50.0), (2.0, 60.0)]


def test_latency_rows_carry_each_rows_own_accuracy():
    """INT8 MatMulInteger rows get their graph's accuracy (not the fp32 model's), and a row the
    bench scored on its runtime gets that score."""
    from prune2deploy.report.html import latency_rows

    rep = {"task": "squad", "method": "gmp", "target_sparsity": 0.8, "metric": "f1", "run_dir": "r",
           "metrics": {"dense": {"f1": 60.0}, "sparse": {"f1": 57.0}},
           "quantize": {"metrics": {"sparse_int8_mmi": {"f1": 55.0}, "dense_int8": {"f1": 58.0}}},
           "bench": [{"model": m, "runtime": rt, "p50_ms": 1.0, "batch_size": 1, "seq_len": 128, **kw}
                     for m, rt, kw in (("sparse", "onnxruntime", {}), ("sparse-int8-mmi", "deepsparse", {}),
                                       ("dense-int8", "openvino", {"accuracy": 57.2, "accuracy_dense": 59.0}),
                                       ("sparse", "openvino-bf16", {"accuracy": 56.5}))]}
    got = [r["metric_value"] for r in latency_rows([rep])]
    assert got == [57.0, 55.0, 57.2, 56.5]
