"""Readiness: a tiny real inference, cached for a few seconds so probes stay cheap."""

from __future__ import annotations

import threading
import time


class ReadinessCheck:
    """Answer "can this process embed right now?" at most once every ``ttl`` seconds."""

    def __init__(self, embedder, *, ttl: float, timeout: float, clock=time.monotonic):
        self._embedder = embedder
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._ready = False

    def __call__(self) -> bool:
        with self._lock:  # concurrent probes share one inference
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                self._ready = self._embedder is not None and self._embedder.probe(self._timeout)
                self._checked_at = self._clock()
            return self._ready
