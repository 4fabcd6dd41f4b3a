"""Batching of checked requests inside the served model: one inference at a time, each taking
every request of one bucket length that queued while the last ran.

Why not MLServer's adaptive batcher (read in mlserver/batching/, 1.7.1): it merges raw requests
before the model sees them, so one malformed request fails every request merged with it; it
counts requests, not rows (16 requests of 64 rows would run as 1,024 rows); and it concatenates
tensors of different sequence lengths. Here requests are checked and padded to a bucket first,
then merged by rows of one shape, up to `max_rows`.

`max_wait_s` (MLServer's `max_batch_time`): how long the first request of a batch waits for more
while the runtime is idle (a batch that fills to `max_rows` goes at once). 0 (the default) adds no
latency at concurrency 1; under load, requests queue while an inference runs and go together in the next.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

import numpy as np

Feed = dict[str, np.ndarray]


class Batcher:
    def __init__(self, run: Callable[[Feed], list[np.ndarray]], max_rows: int, max_wait_s: float = 0.0,
                 on_batch: Callable[[int, int], None] | None = None):
        self._run, self.max_rows, self.max_wait_s = run, max(1, int(max_rows)), max(0.0, float(max_wait_s))
        self._queues: dict[int, deque] = {}  # seq length -> (feed, rows, future, enqueued at)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._on_batch = on_batch  # (requests, rows) of each inference: the server's metrics

    async def submit(self, feed: Feed) -> list[np.ndarray]:
        """This request's outputs (its rows of the merged batch)."""
        loop = asyncio.get_running_loop()
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop())
        first = next(iter(feed.values()))
        fut = loop.create_future()
        self._queues.setdefault(first.shape[1], deque()).append((feed, first.shape[0], fut, time.monotonic()))
        self._wake.set()
        return await fut

    def _oldest(self) -> int | None:
        waiting = [(q[0][3], length) for length, q in self._queues.items() if q]
        return min(waiting)[1] if waiting else None

    def _take(self, length: int) -> list[tuple]:
        q, batch, rows = self._queues[length], [], 0
        while q and (not batch or rows + q[0][1] <= self.max_rows):
            item = q.popleft()
            batch.append(item)
            rows += item[1]
        return batch

    async def _loop(self) -> None:
        while True:
            length = self._oldest()
            if length is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.max_wait_s:  # gather until the window ends or the batch is full, whichever first
                while sum(i[1] for i in self._queues[length]) < self.max_rows:
                    left = self.max_wait_s - (time.monotonic() - self._queues[length][0][3])
                    if left <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = [item for item in self._take(length) if not item[2].cancelled()]
            if not batch:
                continue
            feeds = [item[0] for item in batch]
            merged = feeds[0] if len(feeds) == 1 else {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
            try:
                outs = await asyncio.to_thread(self._run, merged)
            except Exception as e:  # noqa: BLE001 - the runtime failed: every request of this batch is told
                for item in batch:
                    if not item[2].done():
                        item[2].set_exception(e)
                continue
            if self._on_batch:
                self._on_batch(len(batch), sum(item[1] for item in batch))
            start = 0
            for feed, rows, fut, _ in batch:
                if not fut.done():
                    fut.set_result([np.asarray(o)[start:start + rows] for o in outs])
                start += rows
