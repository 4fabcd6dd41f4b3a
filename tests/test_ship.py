"""gate / package / verify on a finished smoke run (built once on a tiny random BERT)."""

import json
import xml.etree.ElementTree as ET

import onnx
import pytest
import yaml
from onnx import numpy_helper

from tests.test_cli import assert_user_error, p2d


@pytest.fixture(scope="module")
def run_dir(rt_smoke_run):
    return rt_smoke_run


def write(path, doc):
    path.write_text(yaml.safe_dump(doc))
    return path


def test_gate_passes_and_writes_junit_and_json(run_dir, tmp_path):
    report = json.loads((run_dir / "report.json").read_text())
    acc = report["metrics"]["sparse"]["accuracy"]
    base = write(
        tmp_path / "g.yaml",
        {
            "gates": [
                {
                    "match": {"task": "rotten_tomatoes", "target_sparsity": 0.7},
                    "metric_min": acc - 1,
                    "sparsity_min": 0.69,
                    "latency_ratio_max": {"onnxruntime": 100.0},
                }
            ]
        },
    )
    res = p2d("gate", run_dir, "--baseline", base, "--junit", tmp_path / "j.xml", "--json", tmp_path / "g.json")
    assert res.returncode == 0, res.stdout + res.stderr
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.tag == "testsuite" and int(suite.get("tests")) >= 3 and suite.get("failures") == "0"
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["passed"] is True and len(data["checks"]) == int(suite.get("tests"))


def test_gate_fails_with_exit_1(run_dir, tmp_path):
    base = write(
        tmp_path / "g.yaml",
        {
            "gates": [
                {
                    "match": {"task": "rotten_tomatoes"},
                    "metric_min": 101.0,
                    "sparsity_min": 0.95,
                    "speedup_min": {"onnxruntime": 50.0},
                }
            ]
        },
    )
    res = p2d("gate", run_dir, "--baseline", base, "--junit", tmp_path / "j.xml")
    assert res.returncode == 1
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert int(suite.get("failures")) >= 3
    assert "FAIL" in res.stdout


@pytest.mark.parametrize("doc,needle", [
    ({"gates": [{"metric_minimum": 1}]}, "unknown key 'metric_minimum'"),
    ({"gates": [{"metric_min": "high"}]}, "expected a number"),
    ({"gatez": []}, "'gates' list"),
    ({"gates": [{"match": {"task": "mnli"}, "metric_min": 1}]}, "no gate in the baseline matches"),
])
def test_gate_bad_baselines(run_dir, tmp_path, doc, needle):
    res = p2d("gate", run_dir, "--baseline", write(tmp_path / "g.yaml", doc))
    assert_user_error(res, needle)


def test_gate_missing_baseline(run_dir, tmp_path):
    assert_user_error(p2d("gate", run_dir, "--baseline", tmp_path / "nope.yaml"), "baseline file not found")


def test_update_baseline_then_gate_passes(run_dir, tmp_path):
    base = tmp_path / "new.yaml"
    res = p2d("gate", run_dir, "--baseline", base, "--update-baseline", "--margin", "0.5")
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(base.read_text())
    assert doc["gates"][0]["match"]["task"] == "rotten_tomatoes" and "metric_min" in doc["gates"][0]
    assert p2d("gate", run_dir, "--baseline", base).returncode == 0


def test_package_then_verify_round_trip(artifact):
    m = json.loads((artifact / "manifest.json").read_text())
    assert set(m["files"]) >= {"model.onnx", "tokenizer.json", "config.json", "README.md", "samples.npz"}
    assert m["encoder_sparsity"] == pytest.approx(0.7, abs=1e-3) and m["per_layer_sparsity"] and m["metrics"]["sparse"]
    assert m["recipe"]["task"] == "rotten_tomatoes" and "torch" in m["versions"] and m["prune2deploy"]
    res = p2d("verify", artifact)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["ok"] * 4, lines  # hashes, checker, sparsity, outputs
    assert lines[0].startswith("ok   sha256 of") and lines[1] == "ok   onnx.checker"
    assert "encoder sparsity 0.7" in lines[2] and "outputs match the reference" in lines[3]


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_verify_catches_a_flipped_byte(artifact, tmp_path):
    art = _copy(artifact, tmp_path / "a")
    data = bytearray((art / "vocab.txt").read_bytes())
    data[10] ^= 0x01
    (art / "vocab.txt").write_bytes(bytes(data))
    res = p2d("verify", art)
    assert res.returncode == 1 and "hash mismatch: vocab.txt" in res.stderr


def test_verify_catches_a_changed_weight(artifact, tmp_path):
    art = _copy(artifact, tmp_path / "b")
    m = json.loads((art / "manifest.json").read_text())
    model = onnx.load(str(art / "model.onnx"))
    name = next(iter(m["onnx_initializers"].values()))["onnx_name"]
    for init in model.graph.initializer:
        if init.name == name:
            arr = numpy_helper.to_array(init).copy()
            arr[arr == 0] = 0.01  # revive pruned weights
            init.CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(model, str(art / "model.onnx"))
    # re-sign the file hash so only the sparsity/output checks can catch it
    from prune2deploy.files import sha256_file

    m["files"]["model.onnx"] = sha256_file(art / "model.onnx")
    (art / "manifest.json").write_text(json.dumps(m))
    res = p2d("verify", art)
    assert res.returncode == 1 and "sparsity of" in res.stderr


def test_package_refuses_existing_nonempty_and_leaves_nothing(run_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("1")
    assert_user_error(p2d("package", run_dir, "--out", out), "not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_package_refuses_a_name_that_is_not_one_path_segment(run_dir, tmp_path, name):
    out = tmp_path / "triton"
    assert_user_error(p2d("package", run_dir, "--out", out, "--format", "triton", "--name", name),
                      "model name", "is not allowed")
    assert not out.exists() and not (tmp_path / "x").exists()


def test_triton_layout_matches_graph(run_dir, tmp_path):
    out = tmp_path / "triton"
    res = p2d("package", run_dir, "--out", out, "--format", "triton", "--name", "rt")
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = (out / "model_repository/rt/config.pbtxt").read_text()
    model = onnx.load(str(out / "model_repository/rt/1/model.onnx"))
    assert 'backend: "onnxruntime"' in cfg and 'name: "rt"' in cfg
    for v in list(model.graph.input) + list(model.graph.output):
        assert f'name: "{v.name}"' in cfg
    assert cfg.count("TYPE_INT64") == len(model.graph.input) and "TYPE_FP32" in cfg
    assert "dims: [ -1 ]" in cfg and "dims: [ 2 ]" in cfg  # seq (dynamic) for inputs, 2 classes out
    assert "task: text_classification" in (out / "deepsparse_server.yaml").read_text()  # the task's own field
    assert p2d("verify", out).returncode == 0
