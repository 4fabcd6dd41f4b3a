"""The CLI end to end (real subprocesses): bad input and the smoke pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def p2d(*args, cwd=None, timeout=600):
    env = dict(os.environ, P2D_QUIET="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "prune2deploy.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


def p2d_smoke(task, model, out, *args, **kw):
    """`p2d run TASK --profile smoke --model MODEL --out OUT ARGS...`: the tests' tiny pipeline."""
    return p2d("run", task, "--profile", "smoke", "--model", model, "--out", out, *args, **kw)


def assert_user_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["run", "squad", "--sparsity", "1.5", "--profile", "smoke"], ["[0, 1)"]),
        (["run", "squad", "--sparsity", "-0.2", "--profile", "smoke"], ["[0, 1)"]),
        (["run", "squad", "--sparsity", "lots", "--profile", "smoke"], ["expected a number"]),
        (["run", "nosuchtask", "--sparsity", "0.5"], ["unknown task 'nosuchtask'"]),
        (["run", "squad", "--method", "random", "--profile", "smoke"], ["unknown method 'random'"]),
        (["run", "squad", "--profile", "giant"], ["unknown profile 'giant'"]),
        (["run", "squad", "--set", "prune.nope=1", "--profile", "smoke"], ["unknown key 'nope'"]),
        (["run", "squad", "--set", "prune.lr=-1", "--profile", "smoke"], ["prune.lr must be in (0, inf), got -1"]),
        (["run", "squad", "--set", "teacher.lr=0", "--profile", "smoke"], ["teacher.lr must be in (0, inf)"]),
        (
            ["run", "squad", "--set", "prune.batch_size=0", "--profile", "smoke"],
            ["prune.batch_size must be in [1, inf), got 0"],
        ),
        (["run", "squad", "--set", "teacher.epochs=-2", "--profile", "smoke"], ["teacher.epochs must be in (0, inf)"]),
        (
            ["run", "squad", "--set", "data.train_examples=0", "--profile", "smoke"],
            ["data.train_examples must be in [1, inf)"],
        ),
        (["run", "squad", "--set", "bench.iters=0", "--profile", "smoke"], ["bench.iters must be in [1, inf)"]),
        (
            ["run", "squad", "--quantize", "int8", "--runtime", "torch", "--profile", "smoke"],
            ["runtime torch cannot run an INT8 ONNX graph"],
        ),
    ],
)
def test_bad_flags(args, needles, tmp_path):
    res = p2d(*args, "--out", tmp_path / "run")
    assert_user_error(res, *needles)
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_model_path(tmp_path):
    res = p2d_smoke("squad", tmp_path / "nope", tmp_path / "run")
    assert_user_error(res, "does not exist")
    assert not any((tmp_path / "run").glob("*/stage.json"))


def test_not_a_model(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    res = p2d_smoke("squad", d, tmp_path / "run")
    assert_user_error(res, "not a model directory")
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    res = p2d_smoke("squad", d, tmp_path / "run2")
    assert_user_error(res, "not a BERT-family")


def _tiny_bert_dir(d):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(d)
    return d


def test_corrupt_or_pickle_only_weights(tmp_path):
    d = _tiny_bert_dir(tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    res = p2d_smoke("rotten_tomatoes", d, tmp_path / "run")
    assert_user_error(res, "corrupt safetensors", "model.safetensors")
    assert not (tmp_path / "run").exists()
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    res = p2d_smoke("rotten_tomatoes", d, tmp_path / "run")
    assert_user_error(res, "no .safetensors", "pytorch_model.bin")


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a dir")
    res = p2d("run", "rotten_tomatoes", "--profile", "smoke", "--out", blocker / "run")
    assert_user_error(res, "cannot write to run dir")


def test_missing_data_files(tmp_path):
    res = p2d("run", "squad", "--profile", "smoke", "--data-dir", tmp_path, "--out", tmp_path / "run")
    assert_user_error(res, "SQuAD file not found", "train-v1.1.json")
    assert not any((tmp_path / "run").glob("*/stage.json"))
    assert not any((tmp_path / "run").glob(".*.tmp"))


def test_csv_missing_columns(tmp_path):
    (tmp_path / "rotten_tomatoes.csv").write_text("review,stars\nnice,1\n")
    res = p2d("run", "rotten_tomatoes", "--profile", "smoke", "--data-dir", tmp_path, "--out", tmp_path / "run")
    assert_user_error(res, "missing column")


def test_lists():
    from prune2deploy.pruning.registry import method_names
    from prune2deploy.tasks.registry import get_task, task_names

    res = p2d("tasks")
    assert res.returncode == 0
    rows = {ln.split()[0]: ln.split()[1] for ln in res.stdout.strip().splitlines()}
    assert rows == {t: get_task(t).metric for t in task_names()}  # every registered task, with its metric
    res = p2d("methods")
    assert res.returncode == 0
    assert [ln.split()[0] for ln in res.stdout.strip().splitlines()] == list(method_names())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`p2d run squad --sparsity 0.8 --profile smoke` on the embedded MiniLM, packaged SQuAD."""
    out = tmp_path_factory.mktemp("runs") / "squad-gmp-0.8"
    res = p2d("run", "squad", "--sparsity", "0.8", "--profile", "smoke", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_smoke_writes_report_and_onnx(smoke_run):
    out, res = smoke_run
    report = json.loads((out / "report.json").read_text())
    for key in ("task", "model", "method", "target_sparsity", "profile", "metrics", "sparsity", "onnx", "bench"):
        assert key in report
    assert report["task"] == "squad" and report["method"] == "gmp" and report["target_sparsity"] == 0.8
    assert {"f1", "exact_match"} <= set(report["metrics"]["dense"]) and {"f1", "exact_match"} <= set(
        report["metrics"]["sparse"]
    )
    assert report["sparsity"]["encoder"] == pytest.approx(0.8, abs=1e-6)
    assert len(report["sparsity"]["per_layer"]) == 36
    assert report["onnx"]["path"] == "export/model.onnx"
    assert report["onnx"]["encoder_sparsity"] == pytest.approx(0.8, abs=1e-6)
    assert report["onnx"]["max_abs_diff"] <= 1e-3
    rows = report["bench"]
    # the dense model's static INT8 is timed without --quantize: a best-dense candidate, scored on its runtime
    assert {r["model"] for r in rows} == {"dense", "sparse", "dense-int8"}
    int8 = next(r for r in rows if r["model"] == "dense-int8")
    assert int8["precision"] == "int8" and 0 <= int8["accuracy"] <= 100
    # judged on the questions validate scores the fp32 models on: all of them by default
    assert int8["accuracy_examples"] == report["data"]["eval"]["eval_questions"] == 16
    for r in rows:
        assert {"runtime", "model", "batch_size", "seq_len", "p50_ms", "p90_ms", "throughput"} <= set(r)
        assert r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"]
    for f in ("model.onnx", "dense.onnx", "tokenizer.json", "config.json"):
        assert (out / "export" / f).is_file()
    preds = json.loads((out / "validate" / "predictions.json").read_text())
    assert len(preds) == report["metrics"]["sparse"]["eval_questions"] and all(
        isinstance(v, str) for v in preds.values()
    )
    for stage in ("teacher", "prune", "validate", "export", "bench"):
        rec = json.loads((out / stage / "stage.json").read_text())
        assert rec["status"] == "done" and rec["key"] and "versions" in rec and rec["seconds"] >= 0
    # embeddings and head stayed dense in the shipped ONNX
    from prune2deploy.graphs.onnx_sparsity import zeros_per_initializer

    z = zeros_per_initializer(out / "export" / "model.onnx")
    assert z["bert.embeddings.word_embeddings.weight"] < 0.01


def test_rerun_skips_up_to_date_stages_and_redoes_tampered(smoke_run):
    out, _ = smoke_run
    before = {s: json.loads((out / s / "stage.json").read_text())["started_at"] for s in ("prune", "validate", "bench")}
    preds = out / "validate" / "predictions.json"
    preds.write_text(preds.read_text().replace('"', "'", 2))  # tamper with an output
    res = p2d("run", "squad", "--sparsity", "0.8", "--profile", "smoke", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    after = {s: json.loads((out / s / "stage.json").read_text())["started_at"] for s in ("prune", "validate", "bench")}
    assert after["prune"] == before["prune"]  # unchanged: skipped
    json.loads(preds.read_text())  # validate was redone: valid JSON again


def test_run_dir_of_another_config_is_refused(smoke_run):
    out, _ = smoke_run
    res = p2d("run", "squad", "--sparsity", "0.5", "--profile", "smoke", "--out", out)
    assert_user_error(res, "another config", "--force")


def test_single_stage_command(smoke_run):
    out, _ = smoke_run
    before = json.loads((out / "bench" / "stage.json").read_text())
    res = p2d("bench", out, "--force")
    assert res.returncode == 0, res.stderr[-2000:]
    after = json.loads((out / "bench" / "stage.json").read_text())
    assert after["started_at"] > before["started_at"]  # re-run, not skipped
    assert after["key"] == before["key"]
    rows = json.loads((out / "bench" / "bench.json").read_text())
    assert rows and all(r.get("p50_ms", 0) > 0 or r.get("error") for r in rows)
    res = p2d("export", out.parent / "nope")
    assert_user_error(res, "not a run dir")


def test_kill_9_during_prune_then_resume_matches_uninterrupted(smoke_run):
    """kill -9 mid-prune, run again: resumes from the checkpoint and ends with the same masks
    and metrics as the uninterrupted run with the same seed (also: --seed is repeatable)."""
    import signal
    import time

    ref, _ = smoke_run
    out = ref.parent / "resumed"
    args = ["run", "squad", "--sparsity", "0.8", "--profile", "smoke", "--out", out, "--set", "checkpoint_every=3"]
    env = dict(os.environ, P2D_QUIET="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prune2deploy.cli", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = out / ".checkpoints" / "prune.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    # kill on the observed state (a checkpoint is on disk and prune has not finished), not
    # after a sleep a fast machine could outrun
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no prune checkpoint appeared"
    import torch

    step = torch.load(ckpt, weights_only=True)["step"]
    assert step >= 3 and step % 3 == 0
    assert not (out / "prune" / "stage.json").exists()  # nothing half-written
    res = p2d(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    log = json.loads((out / "prune" / "train_log.json").read_text())
    assert log["resumed_from"] == step  # from the checkpoint the kill left
    assert not ckpt.exists()  # removed once the stage finished
    from prune2deploy.pruning.masks import load_masks

    a, b = load_masks(ref / "prune" / "masks.safetensors"), load_masks(out / "prune" / "masks.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (ref, out))
    assert ra["metrics"] == rb["metrics"]


def test_export_parity_failure_is_one_line_and_writes_no_export(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, out, "--sparsity", "0.5", "--set", "export.atol=1e-15")
    assert_user_error(res, "export: sparse ONNX outputs differ from PyTorch by", "> atol 1e-15")
    assert (out / "prune" / "stage.json").is_file()  # the stages before it stand
    assert not (out / "export").exists() and not list(out.glob(".export*"))  # nothing half-written
    assert not (out / "report.json").exists()


def test_method_options_bad_input_is_one_line(tmp_path):
    res = p2d(
        "run",
        "squad",
        "--profile",
        "smoke",
        "--method",
        "obert",
        "--set",
        "prune.options.obert.damp=-1",
        "--out",
        tmp_path / "r",
    )
    assert_user_error(res, "prune.options.obert.damp must be > 0, got -1")
    res = p2d("run", "squad", "--profile", "smoke", "--set", "prune.options.nosuch.x=1", "--out", tmp_path / "r")
    assert_user_error(res, "unknown method 'nosuch'")
    assert not (tmp_path / "r").exists()
