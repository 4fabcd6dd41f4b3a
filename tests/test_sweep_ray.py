"""`p2d sweep --engine ray` on a real Ray cluster of two nodes on loopback (one CPU each, started
once for the module): the same outputs as the local engine, a killed worker's point retried
from its stage records, the summary and bad input. Planning of --speedup/--seed sweeps."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from test_cli import ROOT, assert_user_error, p2d

FAST_BENCH = ["--set", "bench.iters=2", "--set", "bench.min_time_s=0", "--set", "bench.warmup=0"]


def sweep_args(model, root, *extra):
    return ["sweep", "rotten_tomatoes", "--profile", "smoke", "--model", model, "--root", root,
            "--set", "threads=1", "--set", "bench.runtimes=onnxruntime", *extra]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c.address
    c.shutdown()


def outputs(run_dir, stage):
    return json.loads((run_dir / stage / "stage.json").read_text())["outputs"]


def test_ray_sweep_gives_the_local_engines_results(cluster, tiny_model_dir, tmp_path):
    local = p2d(*sweep_args(tiny_model_dir, tmp_path / "local", "--sparsity", "0.5,0.8", *FAST_BENCH))
    assert local.returncode == 0, local.stderr[-3000:]
    ray = p2d(*sweep_args(tiny_model_dir, tmp_path / "ray", "--sparsity", "0.5,0.8", *FAST_BENCH,
                          "--engine", "ray", "--address", cluster))
    assert ray.returncode == 0, ray.stderr[-3000:]
    a = json.loads((tmp_path / "local" / "sweep-rotten_tomatoes-smoke.json").read_text())
    b = json.loads((tmp_path / "ray" / "sweep-rotten_tomatoes-smoke.json").read_text())
    assert (a["engine"], b["engine"]) == ("local", "ray")
    assert [p["status"] for p in b["points"]] == ["done", "done"]
    for pa, pb in zip(a["points"], b["points"]):
        assert (pa["sparsity"], pa["dense"], pa["sparse"]) == (pb["sparsity"], pb["dense"], pb["sparse"])
        assert pb["attempts"] == 1 and pb["node"] == socket.gethostname()
        da, db = (tmp_path / e / os.path.basename(pa["run_dir"]) for e in ("local", "ray"))
        for stage in ("prune", "validate", "export"):  # the same seeds: the same masks, weights, predictions
            assert outputs(da, stage) == outputs(db, stage), stage
    # one teacher, trained first, found in the root's cache by both points
    t = [json.loads((tmp_path / "ray" / f"rotten_tomatoes-gmp-{s}" / "teacher" / "stage.json").read_text())["result"]
         for s in ("0.5", "0.8")]
    assert t[0]["model_dir"] == t[1]["model_dir"] and t[1]["cached"] is True
    # `p2d report` reads the Ray sweep's points like a local sweep's
    rep = p2d("report", *sorted((tmp_path / "ray").glob("rotten_tomatoes-*")), "--out", tmp_path / "r.html")
    assert rep.returncode == 0 and "2 runs" in rep.stdout, rep.stderr[-2000:]


def test_a_killed_worker_is_retried_and_resumes_from_its_stage_records(cluster, tiny_model_dir, tmp_path):
    """SIGKILL the point's worker once its prune stage is recorded (the bench is slowed so the point
    is still running): Ray starts it again and it finishes without redoing a recorded stage."""
    root = tmp_path / "runs"
    args = sweep_args(tiny_model_dir, root, "--sparsity", "0.6", "--set", "bench.min_time_s=2",
                      "--engine", "ray", "--address", cluster)
    env = dict(os.environ, P2D_QUIET="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "prune2deploy.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    point = root / "rotten_tomatoes-gmp-0.6"
    attempts = root / ".ray" / f"{point.name}.attempts"
    deadline = time.time() + 300
    while not (point / "prune" / "stage.json").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    before = {s: (point / s / "stage.json").read_text() for s in ("teacher", "prune")}
    assert not (point / "report.json").exists()
    pid = int(attempts.read_text().split()[-1])
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((root / "sweep-rotten_tomatoes-smoke.json").read_text())
    (p,) = summary["points"]
    assert p["status"] == "done" and p["attempts"] == 2, p
    assert len(attempts.read_text().splitlines()) == 2
    for s, text in before.items():  # recorded before the kill: not redone
        assert (point / s / "stage.json").read_text() == text, s
    assert (point / "report.json").is_file() and not list(point.glob(".*.tmp"))


def test_ray_sweep_bad_input(tmp_path, tiny_model_dir):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = sweep_args(tiny_model_dir, tmp_path / "r", "--sparsity", "0.5")
    assert_user_error(p2d(*base, "--engine", "ray", "--address", f"127.0.0.1:{port}"),
                      f"cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert_user_error(p2d(*base, "--engine", "ray", "--address", "nohost:"), "--address must be HOST:PORT")
    assert_user_error(p2d(*base, "--address", "127.0.0.1:6379"), "apply to --engine ray")
    assert_user_error(p2d(*base, "--engine", "spark"), "--engine must be one of local, ray")
    assert_user_error(p2d(*base, "--engine", "ray", "--cpus-per-point", "0"), "--cpus-per-point must be > 0")
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_point_no_node_can_take_is_refused(cluster, tmp_path, tiny_model_dir):
    res = p2d(*sweep_args(tiny_model_dir, tmp_path / "r", "--sparsity", "0.5"), "--engine", "ray",
              "--address", cluster, "--cpus-per-point", "4")
    assert_user_error(res, "no node of the Ray cluster has what a point asks for (4 CPUs", "largest node: 1 CPUs")


def test_engine_ray_without_ray_installed_is_one_line(monkeypatch):
    from prune2deploy.engines import get_engine
    from prune2deploy.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError, match=r"--engine ray needs Ray: pip install 'prune2deploy\[ray\]'"):
        get_engine("ray")


def test_speedup_and_seed_sweeps_plan_one_structured_point_per_target_and_seed(tmp_path):
    from prune2deploy.errors import UserError
    from prune2deploy.sweep import plan_points, point_dir

    points = plan_points("rotten_tomatoes", "smoke", None, ["ziplm", "gmp"], {}, speedups=[1.5, 2.0], seeds=[1, 2])
    assert [(r.seed, r.prune.method, r.prune.target_speedup) for r in points] == [
        (s, m, x) for s in (1, 2) for m in ("ziplm", "gmp") for x in (1.5, 2.0)
    ]
    assert {(r.prune.pattern, r.prune.target_sparsity) for r in points} == {("structured", 0.0)}
    assert point_dir(points[0], tmp_path, seeded=True).name == "rotten_tomatoes-ziplm-1.5x-seed1"
    assert point_dir(points[0], tmp_path, seeded=False).name == "rotten_tomatoes-ziplm-1.5x"
    with pytest.raises(UserError, match="every value must be a number > 1"):
        plan_points("rotten_tomatoes", "smoke", None, ["ziplm"], {}, speedups=[1.0, 2.0])
    res = p2d("sweep", "rotten_tomatoes", "--speedup", "2", "--sparsity", "0.5", "--root", tmp_path / "x")
    assert_user_error(res, "two kinds of target")
    assert_user_error(p2d("sweep", "rotten_tomatoes", "--seed", "1,1", "--root", tmp_path / "x"), "duplicate value")


def test_ctrl_c_cancels_the_points_still_running_and_says_which_finished(cluster, tiny_model_dir, tmp_path):
    root = tmp_path / "runs"
    args = sweep_args(tiny_model_dir, root, "--sparsity", "0.5,0.6,0.7", "--set", "bench.min_time_s=2",
                      "--engine", "ray", "--address", cluster)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "prune2deploy.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    summary = root / "sweep-rotten_tomatoes-smoke.json"
    deadline = time.time() + 300
    def one_done_and_another_started():
        points = json.loads(summary.read_text())["points"] if summary.is_file() else []
        running = [p for p in points if p["status"] != "done"]
        return any(p["status"] == "done" for p in points) and started(root, running)

    while not one_done_and_another_started():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    points = json.loads(summary.read_text())["points"]
    done = [p for p in points if p["status"] == "done"]
    cancelled = [p for p in points if p["status"] == "cancelled"]
    assert done and cancelled and len(done) + len(cancelled) == 3, points
    line = next(ln for ln in err.splitlines() if "sweep interrupted" in ln)
    assert f"cancelled {len(cancelled)} point(s) on Ray" in line
    assert all(f"gmp @ {p['sparsity']:g}" in line.split("finished:")[1] for p in done)
    # the cancelled points that had started stop with the sweep's job (their workers are killed)
    pids = started(root, cancelled)
    assert pids  # a point was running when Ctrl-C came
    deadline = time.time() + 60
    while (alive := [pid for pid in pids if running(pid)]) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive, f"workers of cancelled points still running: {alive}"


def started(root, points):
    """The worker pids of the points' starts (their `.attempts` lines)."""
    return [int(ln.split(" pid ")[1]) for p in points
            for f in [root / ".ray" / f"{os.path.basename(p['run_dir'])}.attempts"] if f.is_file()
            for ln in f.read_text().splitlines()]


def running(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:  # a zombie has stopped
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
