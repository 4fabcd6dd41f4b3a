"""Latency/throughput measurement on fixed-shape inputs, shared by every runtime."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def fixed_inputs(
    tokenizer, samples: list[tuple[str, str | None]], batch_size: int, seq_len: int
) -> dict[str, np.ndarray]:
    """Real task examples tokenized to exactly (batch_size, seq_len): padded or truncated."""
    rows = [samples[i % len(samples)] for i in range(batch_size)]
    first = [a for a, _ in rows]
    second = [b for _, b in rows] if rows[0][1] is not None else None
    enc = tokenizer(
        first, second, padding="max_length", truncation="longest_first", max_length=seq_len, return_tensors="np"
    )
    return {k: v.astype(np.int64) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def time_calls(
    run: Callable[[dict], list], inputs: dict[str, np.ndarray], warmup: int, iters: int, min_time_s: float
) -> tuple[list[float], list]:
    """Warm up, then time at least `iters` calls and at least `min_time_s` seconds (capped at
    20 x iters calls). Returns (per-call milliseconds, the last outputs)."""
    outputs = None
    for _ in range(warmup):
        outputs = run(inputs)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        outputs = run(inputs)
        times.append((time.perf_counter() - t) * 1000.0)
        if len(times) >= 20 * iters:
            break
    return times, outputs


def summarize(times_ms: list[float], batch_size: int) -> dict:
    ms = np.asarray(times_ms)
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": round(p50, 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "iters": len(ms),
        "throughput": round(batch_size * 1000.0 / p50, 2),
    }
