"""The client side of serving, through `tritonclient` (the client Triton users already have):

- `reference_check`: the manifest's stored samples sent to a running server; each served output
  compared with the stored reference output (the tolerance `p2d verify` uses).
- `malformed_check`: requests a server must answer with an error — wrong dtype, wrong shape,
  oversize batch, unknown and missing inputs, a body that is not JSON — each followed by a good
  request that must still be served.
- `load_test`: a bounded load on loopback (a fixed number of requests per concurrency level and a
  time limit): latency p50/p99 and throughput as served, every request accounted for.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..files import read_json
from .verify import reference_for, reference_samples

V2_DTYPES = {np.dtype("int64"): "INT64", np.dtype("int32"): "INT32", np.dtype("float32"): "FP32"}


def client(url: str):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=url, connection_timeout=30.0, network_timeout=60.0)


def infer(c, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """One V2 request of `arrays` (JSON tensors); the named outputs as arrays."""
    import tritonclient.http as httpclient

    inputs = []
    for name, arr in arrays.items():
        x = httpclient.InferInput(name, list(arr.shape), V2_DTYPES[arr.dtype])
        x.set_data_from_numpy(arr, binary_data=False)
        inputs.append(x)
    wanted = [httpclient.InferRequestedOutput(o, binary_data=False) for o in outputs]
    result = c.infer(model, inputs, outputs=wanted)
    return [result.as_numpy(o) for o in outputs]


def samples(artifact: Path, runtime: str = "onnxruntime") -> tuple[dict, dict[str, np.ndarray], list[np.ndarray], list[str]]:  # noqa: E501
    """(manifest, stored inputs, `runtime`'s reference outputs, output names) of an artifact."""
    manifest = read_json(Path(artifact) / "manifest.json")
    inputs, expected = reference_samples(artifact, manifest, reference_for(manifest, runtime)[0])
    return manifest, inputs, expected, [o["name"] for o in manifest["outputs"]]


def reference_check(url: str, model: str, artifact: Path, runtime: str = "onnxruntime") -> tuple[str | None, list[str]]:
    """(first mismatch or None, the checks that passed): the whole reference batch in one
    request, then each sample alone; against `runtime`'s reference and tolerance."""
    manifest, inputs, expected, outs = samples(artifact, runtime)
    atol = reference_for(manifest, runtime)[1]
    c = client(url)
    passed = []
    n = len(inputs["input_ids"])
    batches = [("batch", slice(0, n))] + [(f"sample {i}", slice(i, i + 1)) for i in range(n)]
    worst = 0.0
    for what, sl in batches:
        got = infer(c, model, {k: v[sl] for k, v in inputs.items()}, outs)
        for name, e, g in zip(outs, expected, got):
            if g.shape != e[sl].shape:
                return f"{what}: output {name} has shape {list(g.shape)}, reference {list(e[sl].shape)}", passed
            diff = float(np.abs(e[sl] - g).max())
            worst = max(worst, diff)
            if diff > atol:
                return f"{what}: output {name} differs from the reference by {diff:.2e} > {atol:g}", passed
    passed.append(f"served outputs match the {runtime} reference on {n} samples (batched, then singly; "
                  f"max diff {worst:.0e} <= {atol:g})")
    return None, passed


def _raw_post(url: str, model: str, body: bytes) -> int:
    req = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def malformed_requests(inputs: dict[str, np.ndarray], max_batch: int, vocab: int = 30522,
                       max_seq: int = 512) -> dict[str, dict[str, np.ndarray]]:
    """Name -> a request a server must refuse (built from one good request's arrays)."""
    one = {k: v[:1] for k, v in inputs.items()}
    first = next(iter(one))
    big = {k: np.repeat(v, max_batch + 1, axis=0) for k, v in one.items()}
    long = {k: np.resize(v, (1, max_seq + 1)) for k, v in one.items()}
    ids = one["input_ids"]
    return {
        "negative token id": {**one, "input_ids": np.where(np.arange(ids.shape[1]) == 1, -5, ids)},
        f"token id past the vocabulary ({vocab})": {**one, "input_ids": np.where(np.arange(ids.shape[1]) == 1,
                                                                                   vocab, ids)},
        f"sequence over the usable positions ({max_seq + 1})": long,
        "wrong dtype (FP32 token ids)": {**one, first: one[first].astype(np.float32)},
        "wrong shape (1-D)": {k: v[0] for k, v in one.items()},
        f"oversize batch ({max_batch + 1})": big,
        "unknown input": {**one, "pixel_values": one[first]},
        "missing input": {k: v for k, v in one.items() if k != first},
        "mismatched shapes": {**one, first: np.concatenate([one[first], one[first]], axis=1)},
    }


def served_limits(artifact: Path, manifest: dict) -> tuple[int, int]:
    """(vocabulary size, usable positions) the server enforces for this artifact."""
    from .served_inputs import limits

    config = Path(artifact) / "config.json"
    lim = limits(manifest, read_json(config) if config.is_file() else {})
    return lim.vocab_size, lim.max_seq


def malformed_check(url: str, model: str, artifact: Path, runtime: str = "onnxruntime") -> tuple[str | None, list[str]]:
    """Each malformed request gets an error response (not a crash, not an answer), and a good
    request right after it is still served correctly."""
    from tritonclient.utils import InferenceServerException

    manifest, inputs, expected, outs = samples(artifact, runtime)
    atol = reference_for(manifest, runtime)[1]
    good = {k: v[:1] for k, v in inputs.items()}
    c = client(url)
    passed = []

    def still_serving(after: str) -> str | None:
        got = infer(c, model, good, outs)
        diff = max(float(np.abs(e[:1] - g).max()) for e, g in zip(expected, got))
        if diff > atol:
            return f"after {after}: a good request was answered wrongly (diff {diff:.2e})"
        return None

    vocab, max_seq = served_limits(artifact, manifest)
    for what, arrays in malformed_requests(inputs, int(manifest.get("max_batch_size") or 64), vocab, max_seq).items():
        try:
            infer(c, model, arrays, outs)
            return f"{what}: answered instead of refused", passed
        except InferenceServerException as e:
            status = str(e.status() or "")
            if status and not status.startswith("4"):
                return f"{what}: status {status}, expected a 4xx error", passed
        bad = still_serving(what)
        if bad:
            return bad, passed
        passed.append(f"refused {what}; served the next request")
    status = _raw_post(url, model, b'{"inputs": [ this is not json')
    if not 400 <= status < 500:
        return f"a body that is not JSON: status {status}, expected 4xx", passed
    bad = still_serving("a body that is not JSON")
    if bad:
        return bad, passed
    passed.append("refused a body that is not JSON; served the next request")
    return None, passed


def load_test(
    url: str, model: str, arrays: dict[str, np.ndarray], outputs: list[str], concurrency: int, requests: int,
    time_limit_s: float, expected: list[np.ndarray] | None = None, atol: float = 0.0,
) -> dict:
    """`requests` identical requests from `concurrency` client threads (one connection each),
    stopping early at `time_limit_s`. Every request sent has one outcome: answered (and, given
    `expected`, answered correctly or wrongly), refused (an error status), or failed (any other
    exception, by type); `lost` is what is left, and is 0 unless a worker died uncounted."""
    lat: list[float] = []
    outcomes: dict[str, int] = {}
    first_error: list[str] = []
    sent = {"n": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit_s

    def count(kind: str, detail: str = "") -> None:
        with lock:
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if detail and not first_error:
                first_error.append(detail[:200])

    def worker() -> None:
        c = client(url)
        while True:
            with lock:
                if sent["n"] >= requests or time.monotonic() >= deadline:
                    return
                sent["n"] += 1
            t0 = time.perf_counter()
            try:
                got = infer(c, model, arrays, outputs)
            except Exception as e:  # noqa: BLE001 - every outcome is counted, none crashes the count
                status = getattr(e, "status", lambda: None)()
                count(f"status {status}" if status else f"failed ({type(e).__name__})", str(e))
                continue
            ms = (time.perf_counter() - t0) * 1e3
            with lock:
                lat.append(ms)
            if expected is not None:
                diff = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
                ok = diff <= atol
                count("answered correctly" if ok else "answered wrongly", "" if ok else f"diff {diff:.3g}")
            else:
                count("answered")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    a = np.array(lat) if lat else np.array([np.nan])
    answered = len(lat)
    return {
        "concurrency": concurrency,
        "sent": sent["n"],
        "answered": answered,
        "errors": sum(v for k, v in outcomes.items() if not k.startswith("answered")),
        "wrong": outcomes.get("answered wrongly", 0),
        "lost": sent["n"] - sum(outcomes.values()),
        "outcomes": outcomes,
        "first_error": first_error[0] if first_error else None,
        "wall_s": round(wall, 3),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "throughput_rps": round(answered / wall, 2) if wall else 0.0,
        "batch_size": int(next(iter(arrays.values())).shape[0]),
        "seq_len": int(next(iter(arrays.values())).shape[1]),
    }
