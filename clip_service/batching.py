"""Merge concurrent requests' items into shared forward passes (continuous batching).

One thread per process runs the model; request threads queue their work and
wait. While a batch runs, new work piles up and goes out together in the next
one, so a lone request never waits for company (unless a window is set) and a
busy worker runs few, larger batches, which is where a CPU gets its throughput.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class Overloaded(RuntimeError):
    """The queue is full; the caller should answer 503 with Retry-After."""


@dataclass
class _Job:
    payload: Any
    size: int
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Run ``fn(payloads) -> results`` over the payloads of many callers at once.

    ``fn`` receives a list of payloads (one per caller) whose sizes add up to
    at most ``max_batch`` (a single larger payload goes alone) and returns one
    result per payload, in order.
    """

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int,
                 max_queue: int, window_s: float = 0.0, name: str = "batcher"):
        self._fn = fn
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window_s = window_s
        self.name = name
        self._pid: int | None = None

    def _ensure_started(self) -> None:
        # The thread is started lazily in the process that uses it: a thread
        # started in the Gunicorn master would not exist in the forked workers.
        if self._pid == os.getpid():
            return
        with _START_LOCK:
            if self._pid == os.getpid():
                return
            self._cond = threading.Condition()
            self._jobs: deque[_Job] = deque()
            self._queued = 0
            threading.Thread(target=self._loop, name=f"clip-{self.name}", daemon=True).start()
            self._pid = os.getpid()

    def submit(self, payload: Any, size: int) -> Any:
        """Queue ``payload`` (``size`` items) and block until its result is ready."""
        self._ensure_started()
        job = _Job(payload, size)
        with self._cond:
            if self._jobs and self._queued + size > self.max_queue:
                raise Overloaded(f"{self._queued} items already queued")
            self._jobs.append(job)
            self._queued += size
            self._cond.notify()
        return job.future.result()

    def _take_batch(self) -> list[_Job]:
        with self._cond:
            while not self._jobs:
                self._cond.wait()
            if self.window_s > 0:
                deadline = time.monotonic() + self.window_s
                while self._queued < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            batch = [self._jobs.popleft()]
            total = batch[0].size
            while self._jobs and total + self._jobs[0].size <= self.max_batch:
                job = self._jobs.popleft()
                batch.append(job)
                total += job.size
            self._queued -= total
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            try:
                results = self._fn([job.payload for job in batch])
            except BaseException as exc:  # every waiting caller gets the error
                for job in batch:
                    job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results):
                job.future.set_result(result)


_START_LOCK = threading.Lock()
