"""Data parallel on CPU (gloo, 2 processes): the same masks on both ranks, the same result as
one process with the same global batch (GMP and oBERT), resume on another process count,
and `p2d run --launcher accelerate` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import assert_user_error, p2d, p2d_smoke

from prune2deploy.train.launch import strip_launch_options

HERE = Path(__file__).parent
WORKER = HERE / "ddp_worker.py"


def worker(out, method, total=8, procs=1, stop_at=0, ckpt=""):
    env = dict(os.environ, P2D_QUIET="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = [str(out), method, str(total), str(stop_at), str(ckpt)]
    cmd = (
        [sys.executable, str(WORKER), *args]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
            str(WORKER),
            *args,
        ]
    )
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = {}
    for method in ("gmp", "obert"):
        d = tmp_path_factory.mktemp(f"single-{method}")
        res = worker(d, method)
        assert res.returncode == 0, res.stderr[-3000:]
        out[method] = load(d / "rank0.safetensors")
    return out


def test_strip_launch_options():
    argv = [
        "run",
        "squad",
        "--launcher",
        "accelerate",
        "--processes=2",
        "--sparsity",
        "0.8",
        "--processes",
        "4",
        "--launcher=accelerate",
        "--num-machines",
        "2",
        "--machine-rank=1",
        "--main-address",
        "10.0.0.1:29500",
        "--main-timeout=60",
    ]
    assert strip_launch_options(argv) == ["run", "squad", "--sparsity", "0.8"]


@pytest.mark.parametrize("method", ["gmp", "obert"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, single, method):
    res = worker(tmp_path, method, procs=2)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = load(tmp_path / "rank0.safetensors"), load(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys() and all(
        torch.equal(r0[k], r1[k]) for k in r0
    )  # both ranks hold the same masks and weights
    one = single[method]
    masks = [k for k in one if k.startswith("mask.")]
    assert len(masks) == 12
    zeros = sum(int((one[k] == 0).sum()) for k in masks) / sum(one[k].numel() for k in masks)
    assert abs(zeros - 0.7) < 1e-3  # both pruning events happened
    for k in masks:  # a magnitude/saliency tie within float noise could flip one; none does here
        assert torch.equal(one[k], r0[k]), k
    for k in one:  # the gradient mean over two half-batches is the full batch's, up to float rounding
        assert torch.allclose(one[k].float(), r0[k].float(), atol=1e-5), k


def test_checkpoint_from_two_processes_resumes_on_one(tmp_path, single):
    ckpt = tmp_path / "fit.pt"
    res = worker(tmp_path / "a", "gmp", procs=2, stop_at=5, ckpt=ckpt)
    assert res.returncode != 0 and ckpt.is_file()  # interrupted at step 5, checkpoint of step 3
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and not any(
        k.startswith("module.") for k in state["model"]
    )  # no DDP wrapper in the saved state
    res = worker(tmp_path / "b", "gmp", procs=1, ckpt=ckpt)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, one = load(tmp_path / "b" / "rank0.safetensors"), single["gmp"]
    for k in one:
        assert torch.allclose(one[k].float(), resumed[k].float(), atol=1e-5), k


def test_p2d_run_with_accelerate_launcher_ten_times_in_a_row(tmp_path, tiny_model_dir):
    """The whole pipeline under 2 processes, 10 runs in a row (they share the teacher cache,
    so the later ones race rank 0's fast stages against rank 1's view of the disk): every one
    must pass. The first quantizes with QAT, which trains on rank 0 alone."""
    for i in range(10):
        run = tmp_path / f"run{i}"
        extra = ["--quantize", "int8-static", "--set", "export.qat_epochs=1"] if i == 0 else []
        res = p2d_smoke(
            "rotten_tomatoes",
            tiny_model_dir,
            run,
            "--sparsity",
            "0.6",
            "--launcher",
            "accelerate",
            "--processes",
            "2",
            "--set",
            "bench.iters=2",
            "--set",
            "bench.min_time_s=0",
            "--set",
            "bench.warmup=0",
            "--set",
            "bench.runtimes=onnxruntime",
            *extra,
        )
        assert res.returncode == 0, (i, res.stderr[-4000:])
        rep = json.loads((run / "report.json").read_text())
        assert abs(rep["sparsity"]["encoder"] - 0.6) < 1e-3 and abs(rep["onnx"]["encoder_sparsity"] - 0.6) < 1e-3
        assert not list(run.glob(".*.tmp")) and not list(
            run.glob(".*rank*")
        )  # rank 1's scratch removed, nothing half-written
        teacher = json.loads((run / "teacher" / "stage.json").read_text())["result"]
        assert Path(teacher["model_dir"]).is_dir() and teacher["cached"] == (i > 0)  # trained once, then from the cache
        assert res.stdout.count("encoder sparsity") == 1  # one summary: rank 0's
        if i == 0:
            q = json.loads((run / "quantize" / "stage.json").read_text())["result"]
            assert q["qat"]["steps"] > 0 and abs(q["qat"]["encoder_sparsity"] - 0.6) < 1e-3


def test_launcher_bad_input(tmp_path):
    assert_user_error(
        p2d("run", "rotten_tomatoes", "--launcher", "slurm", "--out", tmp_path / "r"),
        "--launcher must be none or accelerate",
    )


def test_a_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    from prune2deploy.train import distributed as D
    from prune2deploy.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="batch size 8 is not divisible by the 3 processes"):
        D.check_batch(8, "batch size")
    D.check_batch(9, "batch size")  # 3 each
    monkeypatch.setenv("WORLD_SIZE", "1")
    D.check_batch(8, "batch size")


def test_a_failure_on_one_rank_stops_the_others(tmp_path):
    res = worker(tmp_path, "together", procs=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "rank1.txt").read_text() == "ValueError: boom on rank 1"
    assert (tmp_path / "rank0.txt").read_text() == "OtherRankFailed: stage 'x' failed on another rank (see its error)"


def test_ranks_at_different_agreements_raise_instead_of_pairing(tmp_path):
    res = worker(tmp_path, "out_of_step", procs=2)
    assert res.returncode == 0, res.stderr[-3000:]
    for r in (0, 1):
        text = (tmp_path / f"rank{r}.txt").read_text()
        assert text.startswith("OutOfStep: ranks out of step"), text


def test_rank_0_decides_run_or_skip_and_local_blocks_issue_no_collectives(tmp_path):
    res = worker(tmp_path, "decide", procs=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == "decided False; local world 1 active False mean 3.0; after world 2"
    assert (tmp_path / "rank1.txt").read_text() == "decided False; after world 2"


def test_a_launched_rank_ends_by_os_exit_with_the_clis_code_after_destroying_the_group(monkeypatch):
    """No interpreter finalization for a launched rank (where gloo's threads can abort a rank
    whose work is done): the group goes first, then os._exit with the CLI's own exit code."""
    from prune2deploy.train import distributed as D

    calls = []

    class Exited(Exception):
        pass

    def fake_exit(code):
        calls.append(("exit", code))
        raise Exited

    monkeypatch.setattr(D, "_shutdown", lambda: calls.append(("shutdown",)))
    monkeypatch.setattr(D.os, "_exit", fake_exit)
    ends = ((lambda: None, 0), (lambda: sys.exit(2), 2), (lambda: sys.exit(None), 0), (lambda: sys.exit("x"), 1))
    for main, code in ends:
        calls.clear()
        with pytest.raises(Exited):
            D.run_launched(main)
        assert calls == [("shutdown",), ("exit", code)]
    with pytest.raises(ValueError):  # not an exit (--debug): propagates, no os._exit
        D.run_launched(lambda: (_ for _ in ()).throw(ValueError("boom")))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# fp32 training: on a CPU with bf16 (a Zen 4) `precision: auto` trains under bf16 autocast, where two
# half-batches and one whole batch round differently (word embeddings off by more than 1e-5)
FAST = ["--sparsity", "0.6", "--set", "bench.iters=2", "--set", "bench.min_time_s=0", "--set", "bench.warmup=0",
        "--set", "bench.runtimes=onnxruntime", "--set", "precision=fp32"]


def machines(model, outs, port, *extra):
    """`p2d run` as machine ranks 0 and 1 of 2 on 127.0.0.1, one process each, both at once."""
    env = dict(os.environ, P2D_QUIET="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "prune2deploy.cli", "run", "rotten_tomatoes", "--profile", "smoke", "--model",
             str(model), "--out", str(out), *FAST, *extra, "--launcher", "accelerate", "--processes", "1",
             "--num-machines", "2", "--machine-rank", str(rank), "--main-address", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=HERE.parent,
        )
        for rank, out in enumerate(outs)
    ]
    return [(p, *p.communicate(timeout=600)) for p in procs]


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    """The tiny BERT without dropout: N processes then match one process, not just in distribution."""
    from conftest import tiny_config
    from transformers import AutoTokenizer, BertModel

    from prune2deploy.model.load import resolve_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(d)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(d)
    return d


def test_two_machines_on_loopback_match_one_process(tmp_path, no_dropout_model):
    """Machine ranks 0 and 1 (one process each, two `p2d run` commands, one shared run dir):
    the masks of the one-process run, its weights within the single-host test's 1e-5."""
    one = tmp_path / "one" / "run"
    res = p2d_smoke("rotten_tomatoes", no_dropout_model, one, *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    two = tmp_path / "two" / "run"  # another root: its own teacher, trained by the two machines
    (p0, out0, err0), (p1, out1, err1) = machines(no_dropout_model, [two, two], free_port())
    assert p0.returncode == 0 and p1.returncode == 0, (err0[-3000:], err1[-3000:])
    a, b = load(one / "prune" / "masks.safetensors"), load(two / "prune" / "masks.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    wa, wb = load(one / "prune" / "model" / "model.safetensors"), load(two / "prune" / "model" / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5), k
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert ra["metrics"] == rb["metrics"]
    assert json.loads((two / "teacher" / "stage.json").read_text())["result"].get("cached") is not True
    assert out0.count("encoder sparsity") == 1 and "encoder sparsity" not in out1  # one summary: rank 0's
    assert not list(two.glob(".*"))  # no scratch, no share mark left


def test_machines_that_do_not_share_the_run_dir_stop_with_one_line(tmp_path, tiny_model_dir):
    results = machines(tiny_model_dir, [tmp_path / "a", tmp_path / "b"], free_port())
    for p, out, err in results:
        assert p.returncode != 0
        assert "is not the same directory on every machine" in err, err[-3000:]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing left


def test_machine_options_bad_input(tmp_path):
    base = ["run", "rotten_tomatoes", "--out", tmp_path / "r", "--launcher", "accelerate"]
    port = free_port()
    assert_user_error(p2d(*base, "--num-machines", "2", "--machine-rank", "1", "--main-address",
                          f"127.0.0.1:{port}", "--main-timeout", "1"),
                      f"machine rank 1 cannot reach the main process at 127.0.0.1:{port} within 1 s (--main-timeout")
    assert_user_error(p2d(*base, "--num-machines", "2", "--machine-rank", "2", "--main-address", "h:1"),
                      "--machine-rank must be in 0..1")
    assert_user_error(p2d(*base, "--num-machines", "2"), "needs --main-address HOST[:PORT]")
    assert_user_error(p2d(*base, "--num-machines", "2", "--main-address", "h:99999"), "--main-address must be")
    assert_user_error(p2d("run", "rotten_tomatoes", "--out", tmp_path / "r", "--num-machines", "2"),
                      "apply with --launcher accelerate")
    assert not (tmp_path / "r").exists()
