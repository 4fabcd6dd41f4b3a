"""Served latency: a finished run's dense and sparse graphs behind MLServer (KServe V2, `p2d serve`),
under a bounded load on loopback, beside the in-process bench of the same run.

For each graph (dense baseline, sparse) and runtime: package it (`p2d package [--dense]`), start
the server on 127.0.0.1, check the served outputs against the artifact's reference, then send a
fixed number of requests (batch 1, the artifact's reference sample, seq 128) at each concurrency
(a time limit bounds each level), and count every request: answered, error, lost. Idle machine.

    .venv/bin/python benchmarks/serve_load.py runs/squad-gmp-0.8 --out benchmarks/results/serve_load/squad-gmp-0.8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from prune2deploy.files import read_json, write_json_atomic
from prune2deploy.measure.machine import cpu_info, cpu_label
from prune2deploy.ship.package import package
from prune2deploy.ship.serve import Server
from prune2deploy.ship.serve_check import load_test, reference_check, samples
from prune2deploy.ship.verify import reference_for


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--runtimes", default="onnxruntime,openvino")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=200, help="per concurrency level")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per level, at most")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch-rows", type=int, default=16, help="the server's batching (1: off)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    report = read_json(args.run_dir / "report.json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for graph in ("dense", "sparse"):
            art = package(args.run_dir, Path(tmp) / graph, dense=graph == "dense")
            for runtime in args.runtimes.split(","):
                manifest, inputs, expected, outs = samples(art, runtime)
                one = {k: v[:1] for k, v in inputs.items()}
                atol = reference_for(manifest, runtime)[1]
                t0 = time.perf_counter()
                with Server(art, runtime, args.threads, max_batch_rows=args.max_batch_rows) as server:
                    start_s = time.perf_counter() - t0
                    bad, _ = reference_check(server.url, server.name, art, runtime)
                    if bad:
                        raise SystemExit(f"{graph} on {runtime}: {bad}")
                    for c in (int(x) for x in args.concurrency.split(",")):
                        r = load_test(server.url, server.name, one, outs, c, args.requests, args.time_limit,
                                      expected=[e[:1] for e in expected], atol=atol)
                        r.update(graph=graph, runtime=runtime, server_start_s=round(start_s, 1))
                        rows.append(r)
                        print(json.dumps(r), flush=True)
    bench = [
        r for r in report.get("bench") or []
        if r.get("batch_size") == 1 and r.get("seq_len") == 128 and r["runtime"] in args.runtimes.split(",")
        and "p50_ms" in r
    ]
    out = {
        "run_dir": str(args.run_dir), "task": report["task"], "method": report["method"],
        "sparsity": report["target_sparsity"], "speedup": report.get("target_speedup"),
        "cpu": cpu_info(), "cpu_label": cpu_label(),
        "server": "MLServer 1.7.1 (KServe V2 REST, JSON tensors), prune2deploy.ship.mlserver_runtime",
        "client": "tritonclient.http, one connection per client thread",
        "requests_per_level": args.requests, "time_limit_s": args.time_limit, "threads": args.threads,
        "max_batch_rows": args.max_batch_rows,
        "rows": rows, "bench_in_process": bench, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "serve_load.json", out)
    (args.out / "serve_load.md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    target = f"{out['speedup']:g}x structured" if out.get("speedup") else f"{out['sparsity']:.0%}"
    lines = [
        f"Served on {out['cpu_label']}: {out['task']} {out['method']} {target}, batch 1, seq 128, "
        f"{out['requests_per_level']} requests per level ({out['server']}; {out['client']}).",
        "",
        "| graph | runtime | concurrency | answered / sent | errors | p50 ms | p99 ms | req/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['graph']} | {r['runtime']} | {r['concurrency']} | {r['answered']} / {r['sent']} | {r['errors']} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput_rps']:.1f} |"
        )
    lines += ["", "In-process bench of the same run (p2d bench rows, batch 1, seq 128):", "",
              "| graph | runtime | p50 ms |", "|---|---|---|"]
    for r in out["bench_in_process"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['p50_ms']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
