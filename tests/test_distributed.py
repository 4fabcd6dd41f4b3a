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

from prune2deploy.train.distributed import strip_launch_options

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
