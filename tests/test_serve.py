"""A packaged artifact behind a real MLServer (KServe V2) on 127.0.0.1, driven by tritonclient.

Each test starts and stops its own server; every wait is bounded. Skipped, saying why, only
where the serving environment (.venv-serve, made by scripts/bootstrap) is not installed, and
never on CI (CI=true): there a missing serving environment fails, as the DeepSparse guard does.
"""

import json
import os
import shutil

import numpy as np
import pytest

from tests.test_cli import assert_user_error, p2d, p2d_smoke

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
serve = pytest.importorskip("prune2deploy.ship.serve")
try:
    serve.serve_python()
    import tritonclient.http  # noqa: F401
except Exception as e:  # noqa: BLE001
    if ON_CI:
        raise RuntimeError(f"CI: the serving environment must be installed (scripts/bootstrap): {e}") from None
    pytest.skip(f"serving environment not installed: {e}", allow_module_level=True)
try:  # DeepSparse's own environment: only its cases skip where it is absent (never on CI)
    serve.serve_python("deepsparse")
    NO_DEEPSPARSE = None
except Exception as e:  # noqa: BLE001
    if ON_CI:
        raise RuntimeError(f"CI: DeepSparse's serving environment must be installed (scripts/bootstrap): {e}") from None
    NO_DEEPSPARSE = f"DeepSparse's serving environment not installed: {e}"
needs_deepsparse = pytest.mark.skipif(NO_DEEPSPARSE is not None, reason=str(NO_DEEPSPARSE))
DEEPSPARSE = pytest.param("deepsparse", marks=needs_deepsparse)

from prune2deploy.ship.serve import Server, ServerError  # noqa: E402
from prune2deploy.ship.verify import check_files  # noqa: E402
from prune2deploy.ship.serve_check import (  # noqa: E402
    client,
    infer,
    load_test,
    malformed_check,
    reference_check,
    samples,
)


@pytest.fixture(scope="module")
def server(artifact):
    """One ONNX Runtime server for the tests that only send requests (stopped after them)."""
    with Server(artifact, "onnxruntime") as s:
        yield s


def _reference(server, artifact):
    bad, passed = reference_check(server.url, server.name, artifact)
    assert bad is None, bad
    assert "match the onnxruntime reference on 4 samples" in passed[0]
    # the served numbers are the stored ones, which zeros or a constant would not match
    manifest, inputs, expected, outs = samples(artifact)
    got = infer(client(server.url), server.name, inputs, outs)
    assert np.abs(got[0] - expected[0]).max() <= manifest["reference"]["atol"]
    assert np.abs(expected[0]).max() > 10 * manifest["reference"]["atol"]


def test_served_outputs_equal_the_reference(server, artifact):
    _reference(server, artifact)


@pytest.mark.parametrize("runtime", ["openvino", DEEPSPARSE])
def test_served_outputs_equal_the_reference_on_other_runtimes(artifact, runtime):
    with Server(artifact, runtime) as server:
        _reference(server, artifact)
    # the runtime left the artifact as its manifest hashed it (DeepSparse rewrites what it compiles)
    assert check_files(artifact, json.loads((artifact / "manifest.json").read_text())) is None


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server, artifact):
    bad, passed = malformed_check(server.url, server.name, artifact)
    assert bad is None, bad
    # three bad token-value requests, six malformed V2 requests and one body that is not JSON
    assert len(passed) == 10, passed
    assert any("negative token id" in p for p in passed) and any("past the vocabulary" in p for p in passed)
    assert server.proc.poll() is None and server.model_ready()


def test_raw_text_is_tokenized_with_the_packaged_tokenizer(server, artifact):
    import tritonclient.http as httpclient
    from tokenizers import Tokenizer

    manifest, inputs, expected, outs = samples(artifact)
    texts = ["a fine film", "dull and long , with nothing in it"]
    x = httpclient.InferInput("text", [2], "BYTES")
    x.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=False)
    wanted = [httpclient.InferRequestedOutput(outs[0], binary_data=False)]
    from_text = client(server.url).infer(server.name, [x], outputs=wanted).as_numpy(outs[0])
    # the same texts tokenized here and sent as ids: the same answer
    tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    tok.enable_padding()
    enc = tok.encode_batch(texts)
    ids = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }
    from_ids = infer(client(server.url), server.name, {k: ids[k] for k in inputs}, outs)[0]
    assert from_text.shape == (2, expected[0].shape[1])
    assert np.abs(from_text - from_ids).max() <= manifest["reference"]["atol"]
    assert ids["input_ids"].shape[1] > 5 and ids["attention_mask"][0].sum() < ids["attention_mask"][1].sum()


def test_tampered_artifact_is_refused(artifact, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    model = bad / manifest["model"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    # p2d serve checks first: one line, exit 2
    res = p2d("serve", bad, "--port", "1")
    assert_user_error(res, "refused to serve: hash mismatch: model.onnx")
    # the server itself (started without that check) refuses to load it and says why
    server = Server(bad, check=False)
    try:
        server.start()
        with pytest.raises(ServerError, match="hash mismatch: model.onnx"):
            server.wait_ready(timeout=120)
        server.proc.wait(timeout=60)  # MLServer stops when a model fails to load at startup
        assert not server.model_ready() and "ArtifactRefused" in server.log_tail(40)
    finally:
        server.stop()


def test_bounded_load_answers_every_request(server, artifact):
    manifest, inputs, expected, outs = samples(artifact)
    one = {k: v[:1] for k, v in inputs.items()}
    rows = [load_test(server.url, server.name, one, outs, c, requests=24, time_limit_s=60) for c in (1, 4)]
    for r in rows:
        assert r["sent"] == 24 and r["answered"] == 24 and r["errors"] == 0 and r["lost"] == 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"]


def test_load_test_counts_every_outcome(server, artifact):
    """Refused and wrongly answered requests are counted, not crashes: the count can fail."""
    manifest, inputs, expected, outs = samples(artifact)
    one = {k: v[:1] for k, v in inputs.items()}
    bad = {**one, "input_ids": one["input_ids"] - 10**6}  # negative ids: refused with a 400
    r = load_test(server.url, server.name, bad, outs, 2, requests=6, time_limit_s=60)
    assert r["sent"] == 6 and r["answered"] == 0 and r["errors"] == 6 and r["lost"] == 0, r
    assert r["outcomes"] == {"status 400": 6}, r
    wrong = [e[:1] + 1.0 for e in expected]  # a reference the server cannot match
    r = load_test(server.url, server.name, one, outs, 2, requests=6, time_limit_s=60, expected=wrong, atol=1e-4)
    assert r["answered"] == 6 and r["wrong"] == 6 and r["lost"] == 0, r


def test_serve_bad_input_is_one_line(artifact, tmp_path):
    assert_user_error(p2d("serve", tmp_path), "not a p2d artifact")
    assert_user_error(p2d("serve", artifact, "--runtime", "tensorrt"), "unknown serving runtime 'tensorrt'")


def test_serve_check_cli(artifact):
    res = p2d("serve-check", artifact)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    packaged_for = json.loads((artifact / "manifest.json").read_text())["runtime"]["name"]
    assert lines[0].startswith("ok   ") and f"ready on {packaged_for}" in lines[0]  # the default runtime
    assert len(lines) == 12 and all(ln.startswith("ok   ") for ln in lines), lines


def test_p2d_serve_answers_then_stops_on_sigterm(artifact):
    import os
    import selectors
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from prune2deploy.ship.serve import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(serve.REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prune2deploy.cli", "serve", str(artifact), "--port", str(port), "--metrics-port", "0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    name = json.loads((artifact / "manifest.json").read_text())["name"]
    url = f"http://127.0.0.1:{port}/v2/models/{name}/ready"
    try:
        # ready when p2d says so (its line comes after its own readiness check); bounded
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline, said = time.monotonic() + 120, ""
        while time.monotonic() < deadline and proc.poll() is None and not said.startswith("serving "):
            if sel.select(timeout=1):
                said = proc.stderr.readline()
        assert said.startswith(f"serving {name} "), said or "p2d serve said nothing in 120 s"
        assert urllib.request.urlopen(url, timeout=5).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(OSError):  # the server went with it
            urllib.request.urlopen(url, timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()


# --- issue 27: each defect of the first server, and what production serving needs -------------


def _text_request(texts, pairs=None):
    import tritonclient.http as httpclient

    inputs = []
    for name, rows in (("text", texts), ("text_pair", pairs)):
        if rows is None:
            continue
        x = httpclient.InferInput(name, [len(rows)], "BYTES")
        x.set_data_from_numpy(np.array([t.encode() for t in rows], dtype=object), binary_data=False)
        inputs.append(x)
    return inputs


def _served_text(server, outs, texts):
    import tritonclient.http as httpclient

    wanted = [httpclient.InferRequestedOutput(outs[0], binary_data=False)]
    return client(server.url).infer(server.name, _text_request(texts), outputs=wanted).as_numpy(outs[0])


WORDS = [1, 3, 5, 8, 13, 21, 34, 55, 89, 120, 150, 200]  # the lengths and more: 12 shapes


@needs_deepsparse
def test_deepsparse_answers_text_of_any_length(artifact):
    """Defect 1: DeepSparse held 8 shapes and refused a ninth; now every length is padded to a
    bucket compiled at load, and answers as ONNX Runtime does."""
    manifest, inputs, expected, outs = samples(artifact)
    texts = [" ".join(["film"] * n) for n in WORDS]
    with Server(artifact, "onnxruntime") as ort_server:
        ort = [_served_text(ort_server, outs, [t]) for t in texts]
    with Server(artifact, "deepsparse") as server:
        for t, want in zip(texts, ort):
            got = _served_text(server, outs, [t])
            assert np.abs(got - want).max() <= 1e-4, (len(t.split()), got, want)
        assert server.model_ready()


def test_requests_merged_into_one_batch_answer_as_alone(artifact):
    """Batching: concurrent requests of different lengths (two buckets) merged by the server
    answer exactly as each does alone, and the metrics endpoint counts the batches. The window
    is long and a batch goes when it is full (4 rows), so the count does not depend on timing."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    manifest, inputs, expected, outs = samples(artifact)
    texts = [" ".join(["good"] * n) for n in (2, 3, 4, 5, 40, 41, 42, 43)]
    with Server(artifact, "onnxruntime", metrics_port=None) as server:
        alone = [_served_text(server, outs, [t]) for t in texts]
    with Server(artifact, "onnxruntime", max_batch_rows=4, max_batch_time_ms=120_000, metrics_port=None) as server:
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda t: _served_text(server, outs, [t]), texts))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10).read()
    for a, b in zip(alone, together):
        assert np.abs(a - b).max() <= 1e-4
    text = metrics.decode()
    rows = [ln for ln in text.splitlines() if ln.startswith("p2d_batch_requests_count")]
    merged = [ln for ln in text.splitlines() if ln.startswith("p2d_batch_requests_sum")]
    assert rows and merged, text[-2000:]
    # 8 requests, 4 of each bucket: two full batches, one inference each
    assert float(merged[0].split()[-1]) == 8 and float(rows[0].split()[-1]) == 2, (rows, merged)


def test_oversize_body_and_row_count_are_refused_and_serving_goes_on(artifact):
    """Defect 2: the body is capped (413) and counts are checked before any work."""
    import urllib.error
    import urllib.request

    manifest, inputs, expected, outs = samples(artifact)
    with Server(artifact, "onnxruntime", max_body_bytes=64 << 10) as server:
        url = f"http://{server.url}/v2/models/{server.name}/infer"
        big = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                      "data": ["word " * 40000]}]}).encode()
        req = urllib.request.Request(url, data=big, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 413 and b"over 65536 bytes" in e.value.read()
        # a chunked body (no Content-Length) is counted as it arrives
        import http.client

        conn = http.client.HTTPConnection(server.url, timeout=30)
        chunks = iter([big[i:i + 8192] for i in range(0, len(big), 8192)])
        conn.request("POST", f"/v2/models/{server.name}/infer", body=chunks,
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        assert conn.getresponse().status == 413
        conn.close()
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="batch 65 is outside 1..64") as e:
            _served_text(server, outs, ["a"] * 65)
        assert str(e.value.status()).startswith("4")
        assert _served_text(server, outs, ["a fine film"]).shape == (1, expected[0].shape[1])
        bad, _ = reference_check(server.url, server.name, artifact)
        assert bad is None, bad


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_token_values_are_checked(artifact, runtime):
    """Defect 3: negative and out-of-vocabulary ids, attention masks other than 0/1, and
    sequences past the usable positions get a 400 naming the input and the range."""
    from tritonclient.utils import InferenceServerException

    manifest, inputs, expected, outs = samples(artifact)
    one = {k: v[:1].copy() for k, v in inputs.items()}
    cases = {
        "input 'input_ids' holds -5, outside 0..30521": {**one, "input_ids": np.where(one["input_ids"] > 0,
                                                                                      one["input_ids"], -5)},
        "input 'input_ids' holds 99999999, outside 0..30521": {**one, "input_ids": one["input_ids"] * 0 + 99_999_999},
        "input 'attention_mask' holds 7, outside 0..1": {**one, "attention_mask": one["attention_mask"] * 7},
        "sequence length 513 is outside 1..512": {k: np.resize(v, (1, 513)) for k, v in one.items()},
    }
    with Server(artifact, runtime) as server:
        c = client(server.url)
        for needle, arrays in cases.items():
            with pytest.raises(InferenceServerException) as e:
                infer(c, server.name, arrays, outs)
            assert needle in str(e.value) and str(e.value.status()) == "400", (needle, str(e.value))
        bad, _ = reference_check(server.url, server.name, artifact, runtime)
        assert bad is None, bad


def test_roberta_usable_positions_exclude_the_padding_offset():
    from prune2deploy.ship.served_inputs import limits

    lim = limits({}, {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1})
    assert lim.max_seq == 512 and lim.buckets[-1] == 512 and lim.pad_id == 1
    assert limits({}, {"model_type": "bert", "max_position_embeddings": 512}).max_seq == 512
    assert limits({}, {"model_type": "bert", "max_position_embeddings": 100}).buckets == (16, 32, 64, 100)


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, tiny_model_dir):
    run = tmp_path_factory.mktemp("int8-serve") / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, run, "--sparsity", "0.7", "--quantize", "int8-static")
    assert res.returncode == 0, res.stderr[-3000:]
    art = tmp_path_factory.mktemp("int8-art") / "art"
    res = p2d("package", run, "--out", art, "--int8")
    assert res.returncode == 0, res.stderr[-2000:]
    return art


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", DEEPSPARSE])
def test_int8_artifact_passes_serve_check_on_every_runtime(int8_artifact, runtime):
    """Defect 4: references are stored per runtime with the tolerance each was verified with."""
    manifest = json.loads((int8_artifact / "manifest.json").read_text())
    ref = manifest["reference"]
    assert manifest["precision"] == "int8" and runtime in ref["runtimes"], ref
    res = p2d("serve-check", int8_artifact, "--runtime", runtime)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert f"match the {runtime} reference on 4 samples" in res.stdout
    assert ("evaluation only" in res.stdout) == (runtime == "deepsparse")


def _edited(artifact, tmp_path, edit):
    from prune2deploy.files import hash_dir, write_json_atomic

    bad = tmp_path / "edited"
    shutil.copytree(artifact, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    edit(bad, manifest)
    manifest["files"] = {k: v for k, v in hash_dir(bad).items() if k != "manifest.json"}
    write_json_atomic(bad / "manifest.json", manifest)
    return bad


def test_manifest_paths_must_stay_inside_the_artifact(artifact, tmp_path):
    """Defect 5: the server itself refuses a manifest whose model points outside the artifact."""
    outside = tmp_path / "outside.onnx"
    shutil.copy2(artifact / "model.onnx", outside)

    def edit(root, manifest):
        manifest["model"] = "../outside.onnx"

    bad = _edited(artifact, tmp_path, edit)
    server = Server(bad, check=False)
    try:
        server.start()
        with pytest.raises(ServerError, match="points outside it"):
            server.wait_ready(timeout=120)
    finally:
        server.stop()


def test_model_name_is_checked_and_the_manifest_can_be_pinned(artifact, tmp_path):
    """Defect 5: a name is a path segment (checked); the operator may pin the manifest's digest."""
    from prune2deploy.ship.verify import manifest_digest

    def edit(root, manifest):
        manifest["name"] = "../../etc/evil"

    assert_user_error(p2d("serve", _edited(artifact, tmp_path, edit), "--port", "1"), "model name", "not allowed")
    assert_user_error(p2d("serve", artifact, "--name", "a/b", "--port", "1"), "model name 'a/b' is not allowed")
    digest = manifest_digest(artifact)
    assert_user_error(p2d("serve", artifact, "--expect-manifest-sha256", "0" * 64), "refused to serve", "pinned")
    res = p2d("verify", artifact, "--expect-manifest-sha256", digest)
    assert res.returncode == 0 and "ok   manifest.json has the pinned sha256" in res.stdout, res.stderr
    res = p2d("verify", artifact, "--expect-manifest-sha256", "f" * 64)
    assert res.returncode == 1 and "is not the pinned" in res.stderr


def _start_p2d_serve(artifact, *args):
    import selectors
    import subprocess
    import sys
    import time

    from prune2deploy.ship.serve import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(serve.REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prune2deploy.cli", "serve", str(artifact), "--port", str(port), "--metrics-port", "0",
         *args],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline, said = time.monotonic() + 120, []
    while time.monotonic() < deadline and proc.poll() is None and not (said and said[-1].startswith("serving ")):
        if sel.select(timeout=1):
            said.append(proc.stderr.readline())
    assert said and said[-1].startswith("serving "), said or "p2d serve said nothing in 120 s"
    return proc, port, said


def _server_pid(parent: int) -> int:
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return int(out.split()[0])


def _wait_gone(url: str, seconds: float = 30) -> bool:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
        except OSError:
            return True
        time.sleep(0.5)
    return False


def test_server_dies_with_a_killed_p2d_serve_and_its_log_stays(artifact):
    """Defect 6: SIGKILL p2d serve: MLServer must not go on serving on its port."""
    import signal

    proc, port, said = _start_p2d_serve(artifact)
    name = json.loads((artifact / "manifest.json").read_text())["name"]
    log = said[-1].split("server log ")[1].rstrip(")\n")
    try:
        assert "gRPC off" in said[-1]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait_gone(f"http://127.0.0.1:{port}/v2/models/{name}/ready"), "MLServer still serving"
        assert os.path.isfile(log) and "HTTP server running" in open(log).read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_crashed_server_is_reported_with_its_log(artifact):
    """Defect 6: the server dying under p2d serve is said in one line with the log's path, exit 1."""
    import signal

    proc, port, said = _start_p2d_serve(artifact)
    try:
        os.kill(_server_pid(proc.pid), signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        err = proc.stderr.read()
        assert "p2d serve: the server exited (-9)" in err and "server log " in err, err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_binding_beyond_loopback_says_what_is_exposed_and_deepsparse_its_licence():
    from prune2deploy.ship.serve import DEEPSPARSE_LICENCE, exposure

    assert exposure("127.0.0.1", {"http": 8080, "metrics": 8082, "grpc": 0}) is None
    line = exposure("0.0.0.0", {"http": 8080, "metrics": 8082, "grpc": 0})
    assert "every interface" in line and ":8080" in line and ":8082" in line and "gRPC" not in line
    assert "evaluation only" in DEEPSPARSE_LICENCE


def test_package_records_a_production_runtime(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    rt = manifest["runtime"]
    assert rt["production"] and rt["name"] in ("onnxruntime", "openvino", "openvino-bf16"), rt
    assert all("licence" in r for r in manifest["bench"])
    for r in manifest["bench"]:
        assert ("evaluation" in r["licence"]) == (r["runtime"] == "deepsparse"), r


def test_package_prefers_a_production_runtime_even_where_deepsparse_is_fastest():
    from prune2deploy.ship.package import measured_runtime

    rows = [{"model": "sparse", "runtime": rt, "batch_size": 1, "seq_len": 128, "p50_ms": ms}
            for rt, ms in (("deepsparse", 2.0), ("onnxruntime", 9.0), ("openvino", 8.0))]
    assert measured_runtime({"bench": rows}, "sparse", None)["name"] == "openvino"
    named = measured_runtime({"bench": rows}, "sparse", "deepsparse")
    assert named["name"] == "deepsparse" and not named["production"] and "evaluation" in named["licence"]
