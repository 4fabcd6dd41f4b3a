"""A packaged artifact behind a real MLServer (KServe V2) on 127.0.0.1, driven by tritonclient.

Each test starts and stops its own server; every wait is bounded. Skipped, saying why, only
where the serving environment (.venv-serve, made by scripts/bootstrap) is not installed.
"""

import json
import shutil

import numpy as np
import pytest

from tests.test_cli import assert_user_error, p2d

serve = pytest.importorskip("prune2deploy.ship.serve")
try:
    serve.serve_python()
    pytest.importorskip("tritonclient.http")
except Exception as e:  # noqa: BLE001
    pytest.skip(f"serving environment not installed: {e}", allow_module_level=True)

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
    assert "match the reference on 4 samples" in passed[0]
    # the served numbers are the stored ones, which zeros or a constant would not match
    manifest, inputs, expected, outs = samples(artifact)
    got = infer(client(server.url), server.name, inputs, outs)
    assert np.abs(got[0] - expected[0]).max() <= manifest["reference"]["atol"]
    assert np.abs(expected[0]).max() > 10 * manifest["reference"]["atol"]


def test_served_outputs_equal_the_reference(server, artifact):
    _reference(server, artifact)


@pytest.mark.parametrize("runtime", ["openvino", "deepsparse"])
def test_served_outputs_equal_the_reference_on_other_runtimes(artifact, runtime):
    if runtime == "deepsparse":
        try:
            serve.serve_python("deepsparse")
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"DeepSparse serving environment not installed: {e}")
    with Server(artifact, runtime) as server:
        _reference(server, artifact)
    # the runtime left the artifact as its manifest hashed it (DeepSparse rewrites what it compiles)
    assert check_files(artifact, json.loads((artifact / "manifest.json").read_text())) is None


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server, artifact):
    bad, passed = malformed_check(server.url, server.name, artifact)
    assert bad is None, bad
    assert len(passed) == 7, passed  # six malformed V2 requests and one body that is not JSON
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


def test_serve_bad_input_is_one_line(artifact, tmp_path):
    assert_user_error(p2d("serve", tmp_path), "not a p2d artifact")
    assert_user_error(p2d("serve", artifact, "--runtime", "tensorrt"), "unknown serving runtime 'tensorrt'")


def test_serve_check_cli(artifact):
    res = p2d("serve-check", artifact)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("ok   ") and "ready on onnxruntime" in lines[0]
    assert len(lines) == 9 and all(ln.startswith("ok   ") for ln in lines), lines


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
        [sys.executable, "-m", "prune2deploy.cli", "serve", str(artifact), "--port", str(port)],
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
