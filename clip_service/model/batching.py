"""Merge concurrent requests' items into shared forward passes (continuous batching).

A few runner threads per process (one per core) run the model; request
threads queue their work and wait. While batches run, new work piles up and
goes out together in the next one, so a lone request never waits for company
(unless a window is set) and a busy worker runs few, larger batches, which is
where a CPU gets its throughput. Several single-threaded runners beat one
runner with several torch threads on these machines (bench/), and they share
one queue, so no core idles while another has a backlog.
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
                 max_queue: int, window_s: float = 0.0, runners: int = 1, name: str = "batcher"):
        self._fn = fn
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window_s = window_s
        self.runners = runners
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
            self._idle = self.runners
            for i in range(self.runners):
                threading.Thread(target=self._loop, name=f"clip-{self.name}-{i}", daemon=True).start()
            self._pid = os.getpid()

    def submit(self, payload: Any, size: int) -> Any:
        """Queue ``payload`` (``size`` items) and block until its result is ready."""
        return self.submit_many([(payload, size)])[0]

    def submit_many(self, parts: Sequence[tuple[Any, int]]) -> list[Any]:
        """Queue several (payload, size) parts at once (all or none) and wait for all their results.

        A large request split into parts can run on several idle runners at once.
        """
        self._ensure_started()
        jobs = [_Job(payload, size) for payload, size in parts]
        total = sum(job.size for job in jobs)
        with self._cond:
            if self._jobs and self._queued + total > self.max_queue:
                raise Overloaded(f"{self._queued} items already queued")
            self._jobs.extend(jobs)
            self._queued += total
            self._cond.notify(len(jobs))
        return [job.future.result() for job in jobs]

    def _take_batch(self) -> list[_Job]:
        with self._cond:
            while not self._jobs:
                self._cond.wait()
            if self.window_s > 0:
                deadline = time.monotonic() + self.window_s
                while self._queued < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            # Leave a fair share of the queue for the other idle runners.
            share = max(1, -(-self._queued // max(1, self._idle)))
            limit = min(self.max_batch, share)
            batch = [self._jobs.popleft()]
            total = batch[0].size
            while self._jobs and total + self._jobs[0].size <= limit:
                job = self._jobs.popleft()
                batch.append(job)
                total += job.size
            self._queued -= total
            self._idle -= 1
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            try:
                results = self._fn([job.payload for job in batch])
            except BaseException as exc:  # every waiting caller gets the error
                for job in batch:
                    job.future.set_exception(exc)
            else:
                for job, result in zip(batch, results):
                    job.future.set_result(result)
            with self._cond:
                self._idle += 1


_START_LOCK = threading.Lock()
