"""The shared tier: vectors in Redis, so every instance behind one service shares them.

A Redis that is down, slow or full must never fail or noticeably slow a
request: every call has a short timeout, errors are misses, and after a few
failures in a row the tier is skipped for a while before it is tried again.
Writes go through a small background queue, off the request's path. Values
are the vectors' float32 bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Sequence

import numpy as np

from ..process_local import PerProcess

log = logging.getLogger(__name__)

# Failures in a row before the tier is skipped, and for how long.
FAILURES_TO_TRIP = 3
# Writes waiting for the background writer; past this they are dropped (a cache may forget).
_MAX_PENDING_WRITES = 1024
_KEY_PREFIX = b"clip:"


class RedisTier:
    """Get and set float32 vectors in Redis; every failure is a miss."""

    def __init__(self, url: str, *, dimensions: int, timeout: float = 0.05, ttl: int = 0,
                 retry_after: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.dimensions = dimensions
        self.timeout = timeout
        self.ttl = ttl  # seconds; 0: keep until Redis evicts them
        self.retry_after = retry_after
        self._clock = clock
        self._failures = 0
        self._skip_until = 0.0
        self._state_lock = threading.Lock()
        # One client (and writer thread) per process: sockets must not be shared across a fork.
        self._client = PerProcess(self._connect)
        self._writes = PerProcess(self._start_writer)
        # Called as on_error() for each failed call; metrics hang here.
        self.on_error: Callable[[], None] | None = None

    def _connect(self):
        import redis  # only needed when a shared tier is configured

        return redis.Redis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                                    retry=None, health_check_interval=0)

    @property
    def available(self) -> bool:
        """False while the tier is skipped after repeated failures."""
        return self._clock() >= self._skip_until

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """The vector for each key, or None (absent, of another length, or Redis failing or being skipped)."""
        return [v if v is not None and len(v) == self.dimensions else None for v in self.read_many(keys)]

    def read_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """What Redis holds for each key as float32 values of any length, for the caller to judge; None when absent.

        Redis is shared and writable by anyone who can reach it: its values are not trusted here.
        """
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            values = self._client.get().mget([_KEY_PREFIX + key for key in keys])
        except Exception as exc:  # any failure of a cache is a miss, never the request's failure
            self._failed(exc)
            return [None] * len(keys)
        self._succeeded()
        # Bytes that are not whole floats read as no floats at all: of the wrong length, whatever the caller expects.
        return [None if v is None else np.frombuffer(v if len(v) % 4 == 0 else b"", dtype="<f4").copy()
                for v in values]

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        """Queue the vectors for the background writer; never blocks the caller."""
        if not items or not self.available:
            return
        try:
            self._writes.get().put_nowait([(_KEY_PREFIX + k, np.asarray(v, dtype="<f4").tobytes()) for k, v in items])
        except queue.Full:
            pass  # Redis is not keeping up: these vectors are simply not shared

    def _start_writer(self) -> queue.Queue:
        pending: queue.Queue = queue.Queue(maxsize=_MAX_PENDING_WRITES)
        threading.Thread(target=self._write_forever, args=(pending,), name="clip-cache-redis-writer",
                         daemon=True).start()
        return pending

    def _write_forever(self, pending: queue.Queue) -> None:
        while True:
            items = pending.get()
            if not self.available:
                continue
            try:
                with self._client.get().pipeline(transaction=False) as pipe:
                    for key, value in items:
                        pipe.set(key, value, ex=self.ttl or None)
                    pipe.execute()
            except Exception as exc:
                self._failed(exc)
            else:
                self._succeeded()

    def _failed(self, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error()
        with self._state_lock:
            self._failures += 1
            if self._failures >= FAILURES_TO_TRIP:
                self._skip_until = self._clock() + self.retry_after
                self._failures = 0
                tripped = True
            else:
                tripped = False
        if tripped:
            log.warning("the Redis cache failed %d times in a row (%s); skipping it for %g s",
                        FAILURES_TO_TRIP, type(exc).__name__, self.retry_after)

    def _succeeded(self) -> None:
        with self._state_lock:
            self._failures = 0
