"""Merge concurrent requests' items into shared forward passes (continuous batching).

A few runner threads per process (one per core) run the model; request
threads queue their work and wait. While batches run, new work piles up and
goes out together in the next one, so a lone request never waits for company
(unless a window is set) and a busy worker runs few, larger batches, which is
where a CPU gets its throughput. Several single-threaded runners beat one
runner with several torch threads on these machines (bench/), and they share
one queue, so no core idles while another has a backlog.

Requests still downloading their images announce them (``expect``). An idle
runner that finds work while announced items are on their way waits for them,
up to ``dwell_s``: a forward pass streams every weight of the tower from memory
whatever its size, so with many clients of one image each, batches of one
(a runner starting on each arrival) cost ~15% more per image than the batches
of four that waiting gives (bench/results/lone_request.md). The download and
decoding being waited for run on the same cores meanwhile, so the cores do not
idle; a lone request announces nothing else and never waits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..process_local import PerProcess


class Overloaded(RuntimeError):
    """The queue is full; the caller should answer 503 with Retry-After."""


class Stopped(RuntimeError):
    """The batcher was stopped (``stop``): the work was not run."""


@dataclass
class _Job:
    payload: Any
    size: int
    future: Future = field(default_factory=Future)


@dataclass(eq=False)
class MicroBatcher:
    """Run ``fn(payloads) -> results`` over the payloads of many callers at once.

    ``fn`` receives a list of payloads (one per caller) whose sizes add up to
    at most ``max_batch`` (a single larger payload goes alone) and returns one
    result per payload, in order.
    """

    fn: Callable[[Sequence[Any]], Sequence[Any]]
    max_batch: int
    max_queue: int  # items waiting per process before submit raises Overloaded
    window_s: float = 0.0  # extra wait for company before a batch runs
    runners: int = 1
    name: str = "batcher"
    dwell_s: float = 0.0  # longest wait for announced items (``expect``) before a smaller batch runs

    def __post_init__(self):
        # Runner threads start in the process that first submits: threads started in
        # the Gunicorn master would not exist in the forked workers.
        self._state = PerProcess(self._start)

    def _start(self) -> "_State":
        state = _State(runners=self.runners)
        state.threads = [threading.Thread(target=self._loop, args=(state,), name=f"clip-{self.name}-{i}", daemon=True)
                         for i in range(self.runners)]
        for thread in state.threads:
            thread.start()
        return state

    def stop(self, timeout: float = 60.0) -> None:
        """Run nothing more (queued and later work fails with ``Stopped``); wait for the passes under way.

        For a process about to exit: a runner still inside torch when the
        interpreter exits aborts the process (SIGABRT).
        """
        if not self._state.made:
            return
        state = self._state.get()
        with state.cond:
            state.stopped = True
            dropped, state.jobs, state.queued = state.jobs, deque(), 0
            state.cond.notify_all()
        for job in dropped:
            job.future.set_exception(Stopped(f"{self.name} stopped"))
        deadline = time.monotonic() + timeout
        for thread in state.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def started(self) -> bool:
        """Whether this process's runners have started (on the first submit)."""
        return self._state.made

    @property
    def queued(self) -> int:
        """Items waiting for a runner in this process."""
        return self._state.get().queued if self._state.made else 0

    @property
    def expected(self) -> int:
        """Items announced by ``expect`` and not yet submitted, in this process."""
        return self._state.get().expected if self._state.made else 0

    def expect(self, size: int) -> "Expected":
        """Announce ``size`` items that will be submitted soon (a use as a context manager ends it).

        The announcement ends when ``submit_many(..., expected=it)`` queues
        the items (whatever their number then: failed downloads never come)
        or when it is closed, whichever is first.
        """
        state = self._state.get()
        with state.cond:
            state.expected += size
        return Expected(state, size)

    def submit(self, payload: Any, size: int) -> Any:
        """Queue ``payload`` (``size`` items) and block until its result is ready."""
        return self.submit_many([(payload, size)])[0]

    def submit_many(self, parts: Sequence[tuple[Any, int]], expected: "Expected | None" = None) -> list[Any]:
        """Queue several (payload, size) parts at once (all or none) and wait for all their results.

        A large request split into parts can run on several idle runners at
        once. ``expected``, the announcement of these items, ends as they
        are queued (in the same step, so no runner sees neither).
        """
        state = self._state.get()
        jobs = [_Job(payload, size) for payload, size in parts]
        total = sum(job.size for job in jobs)
        with state.cond:
            if state.stopped:
                raise Stopped(f"{self.name} stopped")
            if state.jobs and state.queued + total > self.max_queue:
                raise Overloaded(f"{state.queued} items already queued")
            state.jobs.extend(jobs)
            state.queued += total
            if expected is not None:
                expected.end_locked()
            state.cond.notify_all()  # runners waiting for company re-check, too
        return [job.future.result() for job in jobs]

    def _take_batch(self, state: "_State") -> list[_Job] | None:
        with state.cond:
            while True:
                while not state.jobs:
                    if state.stopped:
                        return None
                    state.cond.wait()
                if self.window_s > 0:
                    self._wait(state, self.window_s, lambda: True)
                if self.dwell_s > 0 and state.expected:
                    self._wait(state, self.dwell_s, lambda: state.expected > 0)
                if state.jobs:  # another runner may have taken them all while this one waited
                    break
            # Leave a fair share of the queue for the other idle runners.
            share = max(1, -(-state.queued // max(1, state.idle)))
            limit = min(self.max_batch, share)
            batch = [state.jobs.popleft()]
            total = batch[0].size
            while state.jobs and total + state.jobs[0].size <= limit:
                job = state.jobs.popleft()
                batch.append(job)
                total += job.size
            state.queued -= total
            state.idle -= 1
            return batch

    def _wait(self, state: "_State", seconds: float, more_may_come: Callable[[], bool]) -> None:
        """With the lock held: wait up to ``seconds`` while the batch is short of ``max_batch`` and more may come."""
        deadline = time.monotonic() + seconds
        while state.queued < self.max_batch and more_may_come() and (left := deadline - time.monotonic()) > 0:
            state.cond.wait(left)

    def _loop(self, state: "_State") -> None:
        while (batch := self._take_batch(state)) is not None:
            try:
                results = self.fn([job.payload for job in batch])
            except BaseException as exc:  # every waiting caller gets the error
                for job in batch:
                    job.future.set_exception(exc)
            else:
                for job, result in zip(batch, results):
                    job.future.set_result(result)
            with state.cond:
                state.idle += 1


class Expected:
    """Items announced to a batcher and not yet submitted (``MicroBatcher.expect``)."""

    def __init__(self, state: "_State", size: int):
        self._state = state
        self.size = size

    def end_locked(self) -> None:
        """End the announcement; the caller holds the batcher's lock."""
        self._state.expected -= self.size
        self.size = 0

    def close(self) -> None:
        """End the announcement (nothing was submitted, or it has ended already)."""
        with self._state.cond:
            if self.size:
                self.end_locked()
                self._state.cond.notify_all()

    def __enter__(self) -> "Expected":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _State:
    """One process's queue, the count of its idle runners, and the items announced to it."""

    def __init__(self, runners: int):
        self.cond = threading.Condition()
        self.jobs: deque[_Job] = deque()
        self.queued = 0
        self.idle = runners
        self.expected = 0
        self.stopped = False
        self.threads: list[threading.Thread] = []
