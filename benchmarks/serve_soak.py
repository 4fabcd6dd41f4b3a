"""A bounded soak of `p2d serve` on loopback: good, malformed, oversize and bad-id requests mixed,
at several concurrencies, every outcome counted; server RSS before and after; liveness probed
throughout; then the throughput of good requests at concurrency 1 and 16, batching on and off.

Each request kind carries the outcome it must get: good ones an answer equal to the reference
(token ids: the artifact's stored reference for the runtime; text: the server's own answer to
that text sent alone, before the soak), bad ones a 4xx naming the fault (400; 413 for a body over
the cap). The schedule is seeded; the client uses one keep-alive HTTP connection per thread
(JSON V2 tensors, built once), on the same CPU as the server.

    .venv/bin/python benchmarks/serve_soak.py ARTIFACT --runtime onnxruntime --out benchmarks/results/serve_soak/X
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from prune2deploy.files import write_json_atomic
from prune2deploy.measure.machine import cpu_info, cpu_label
from prune2deploy.ship.serve import Server
from prune2deploy.ship.serve_check import samples, served_limits
from prune2deploy.ship.verify import reference_for

WORDS = "the film is a quiet and patient study of grief , funny in places and never dull".split()


def tensor(name: str, arr: np.ndarray, datatype: str = "INT64") -> dict:
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr.reshape(-1).tolist()}


def body(inputs: list[dict]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


def kinds(manifest: dict, inputs: dict, expected: list, atol: float, vocab: int, max_seq: int, max_body: int):
    """name -> (body, expected status, expected outputs or None, atol)."""
    one = {k: v[:1] for k, v in inputs.items()}
    ids = [tensor(k, v) for k, v in one.items()]
    out = {
        "good ids b1": (body(ids), 200, [e[:1] for e in expected], atol),
        "good ids b4": (body([tensor(k, v) for k, v in inputs.items()]), 200, expected, atol),
    }
    rng = random.Random(0)
    for n in (1, 4, 9, 17, 30, 60, 110, 200, 300):
        text = " ".join(rng.choice(WORDS) for _ in range(n))
        out[f"good text {n} words"] = (body([{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]),
                                       200, None, atol)
    first = next(iter(one))
    bad = {
        "wrong dtype": [tensor(k, v.astype(np.float32), "FP32") if k == first else tensor(k, v)
                        for k, v in one.items()],
        "1-D shape": [{**tensor(k, v), "shape": [v.shape[1]]} for k, v in one.items()],
        "unknown input": ids + [tensor("pixel_values", one[first])],
        "missing input": ids[1:],
        "batch 65": [tensor(k, np.repeat(v, 65, axis=0)) for k, v in one.items()],
        "negative id": [tensor(k, v - 10**6 if k == "input_ids" else v) for k, v in one.items()],
        "id past vocab": [tensor(k, v * 0 + vocab if k == "input_ids" else v) for k, v in one.items()],
        "attention mask 7": [tensor(k, v * 7 if k == "attention_mask" else v) for k, v in one.items()],
        f"seq {max_seq + 1}": [tensor(k, np.resize(v, (1, max_seq + 1))) for k, v in one.items()],
    }
    for name, inp in bad.items():
        out[f"bad: {name}"] = (body(inp), 400, None, atol)
    out["bad: not JSON"] = (b'{"inputs": [ this is not json', 422, None, atol)  # MLServer's (FastAPI's) status
    out["oversize body"] = (body([{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": ["word " * (max_body // 5 + 10)]}]), 413, None, atol)
    return out


class Client:
    def __init__(self, url: str, model: str):
        self.host, self.port = url.rsplit(":", 1)
        self.path = f"/v2/models/{model}/infer"
        self.conn = None

    def post(self, data: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a server that closed the connection (after a 413): one new one
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
                self.conn.request("POST", self.path, body=data, headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                payload = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, payload
            except (ConnectionError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def outputs_of(payload: bytes, names: list[str]) -> list[np.ndarray]:
    doc = json.loads(payload)
    by = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in doc["outputs"]}
    return [by[n] for n in names]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(server: Server, table: dict, names: list[str], schedule: list[tuple[int, int]], seed: int) -> list[dict]:
    rows = []
    rng = random.Random(seed)
    keys = list(table)
    weights = [1 if k == "oversize body" else (8 if k.startswith("good") else 3) for k in keys]
    for concurrency, n in schedule:
        plan = rng.choices(keys, weights, k=n)
        counts: dict[str, dict[str, int]] = {}
        lock = threading.Lock()
        nxt = {"i": 0}
        lat = []

        def worker():
            c = Client(server.url, server.name)
            while True:
                with lock:
                    if nxt["i"] >= len(plan):
                        return
                    kind = plan[nxt["i"]]
                    nxt["i"] += 1
                data, want, expected, atol = table[kind]
                t0 = time.perf_counter()
                try:
                    status, payload = c.post(data)
                    if status != want:
                        outcome = f"status {status}, wanted {want}"
                    elif want != 200:
                        outcome = "refused as it should be"
                    else:
                        diff = max(float(np.abs(g - e).max()) for g, e in zip(outputs_of(payload, names), expected))
                        outcome = "answered correctly" if diff <= atol else f"answered wrongly ({diff:.2g})"
                except Exception as e:  # noqa: BLE001 - every outcome is counted
                    outcome = f"failed ({type(e).__name__})"
                with lock:
                    if want == 200:
                        lat.append((time.perf_counter() - t0) * 1e3)
                    counts.setdefault(kind, {}).setdefault(outcome, 0)
                    counts[kind][outcome] += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(worker) for _ in range(concurrency)]:
                f.result()
        wall = time.perf_counter() - t0
        total = sum(sum(v.values()) for v in counts.values())
        ok = sum(v.get("answered correctly", 0) + v.get("refused as it should be", 0) for v in counts.values())
        rows.append({"concurrency": concurrency, "sent": len(plan), "counted": total, "as_expected": ok,
                     "not_as_expected": total - ok, "lost": len(plan) - total, "wall_s": round(wall, 2),
                     "good_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat else None,
                     "good_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None,
                     "rss_kb_after": rss_kb(server.proc.pid), "by_kind": counts})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "by_kind"}), flush=True)
    return rows


def throughput(server: Server, data: bytes, concurrency: int, n: int) -> dict:
    lock, nxt, lat = threading.Lock(), {"i": 0}, []

    def worker():
        c = Client(server.url, server.name)
        while True:
            with lock:
                if nxt["i"] >= n:
                    return
                nxt["i"] += 1
            t0 = time.perf_counter()
            status, _ = c.post(data)
            assert status == 200, status
            with lock:
                lat.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": n, "answered": len(lat), "wall_s": round(wall, 2),
            "throughput_rps": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--schedule", default="1:1000,4:2000,16:2000", help="concurrency:requests,...")
    ap.add_argument("--throughput-requests", type=int, default=300)
    ap.add_argument("--max-body-mb", type=float, default=8.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    manifest, inputs, expected, names = samples(args.artifact, args.runtime)
    atol = reference_for(manifest, args.runtime)[1]
    vocab, max_seq = served_limits(args.artifact, manifest)
    max_body = int(args.max_body_mb * (1 << 20))
    table = kinds(manifest, inputs, expected, atol, vocab, max_seq, max_body)
    schedule = [tuple(int(x) for x in part.split(":")) for part in args.schedule.split(",")]
    result = {"artifact": str(args.artifact), "name": manifest["name"], "runtime": args.runtime,
              "cpu": cpu_info(), "cpu_label": cpu_label(), "threads": args.threads, "max_body_bytes": max_body,
              "atol": atol, "kinds": {k: v[1] for k, v in table.items()}, "schedule": schedule}
    with Server(args.artifact, args.runtime, args.threads, max_body_bytes=max_body) as server:
        c = Client(server.url, server.name)
        for kind, (data, want, exp, tol) in list(table.items()):  # text: its answer alone, the reference
            if kind.startswith("good text"):
                status, payload = c.post(data)
                assert status == 200, (kind, status, payload[:200])
                table[kind] = (data, want, outputs_of(payload, names), tol)
        result["rss_kb_before"] = rss_kb(server.proc.pid)
        probes = {"live_200": 0, "live_other": 0}
        stop = threading.Event()

        def probe():
            while not stop.is_set():
                ok = server.live()
                probes["live_200" if ok else "live_other"] += 1
                stop.wait(0.5)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        t0 = time.perf_counter()
        result["soak"] = soak(server, table, names, schedule, seed=1)
        result["soak_wall_s"] = round(time.perf_counter() - t0, 1)
        stop.set()
        prober.join()
        result["liveness_probes"] = probes
        result["rss_kb_after"] = rss_kb(server.proc.pid)
        result["still_ready"] = server.model_ready()
    # throughput, each server fresh (not after the soak), batched and not
    payloads = {"token ids, seq 128": table["good ids b1"][0], "text, 9 words": table["good text 9 words"][0]}
    for key, rows in (("throughput_batched", 16), ("throughput_unbatched", 1)):
        with Server(args.artifact, args.runtime, args.threads, max_batch_rows=rows) as server:
            for data in payloads.values():  # warm
                throughput(server, data, 4, 20)
            result[key] = {k: [throughput(server, v, cc, args.throughput_requests) for cc in (1, 16)]
                           for k, v in payloads.items()}
    result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "serve_soak.json", result)
    (args.out / "serve_soak.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [f"Soak of `p2d serve` ({r['runtime']}, {r['threads']} threads, body cap {r['max_body_bytes']} bytes) "
             f"on {r['cpu_label']}: {r['name']}; client on the same CPU.", "",
             "| concurrency | sent | as expected | not as expected | lost | good p50 / p99 ms | wall s "
             "| RSS after MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for s in r["soak"]:
        rss = f"{s['rss_kb_after'] / 1024:.0f}" if s.get("rss_kb_after") else "-"
        lines.append(f"| {s['concurrency']} | {s['sent']} | {s['as_expected']} | {s['not_as_expected']} | {s['lost']} "
                     f"| {s['good_p50_ms']} / {s['good_p99_ms']} | {s['wall_s']} | {rss} |")
    kinds_seen: dict[str, dict[str, int]] = {}
    for s in r["soak"]:
        for k, v in s["by_kind"].items():
            for o, n in v.items():
                kinds_seen.setdefault(k, {}).setdefault(o, 0)
                kinds_seen[k][o] += n
    lines += ["", "| request kind | wanted | outcomes |", "|---|---|---|"]
    for k, v in kinds_seen.items():
        lines.append(f"| {k} | {r['kinds'][k]} | " + ", ".join(f"{o}: {n}" for o, n in sorted(v.items())) + " |")
    lines += ["", f"Server RSS {r['rss_kb_before'] / 1024:.0f} MiB before, {r['rss_kb_after'] / 1024:.0f} MiB after; "
              f"liveness probes during the soak: {r['liveness_probes']}; ready after: {r['still_ready']}.", "",
              "Good requests only, batch 1 each:", "",
              "| request | server | concurrency | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for label, key in (("batched (max 16 rows)", "throughput_batched"),
                       ("one request per inference", "throughput_unbatched")):
        for what, rows in r[key].items():
            for t in rows:
                lines.append(f"| {what} | {label} | {t['concurrency']} | {t['throughput_rps']} | {t['p50_ms']} "
                             f"| {t['p99_ms']} |")
            ratio = rows[1]["throughput_rps"] / rows[0]["throughput_rps"]
            lines.append(f"| {what} | {label} | **c=16 / c=1** | **{ratio:.2f}x** | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
