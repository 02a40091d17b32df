"""What the health probes report for this worker: the model, its warm-up, and a tiny real inference."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Readiness:
    """Whether this worker can embed: its warm-up passed, and a tiny real inference (at most once per ``ttl`` s)."""

    def __init__(self, embedder, *, ttl: float, timeout: float, clock=time.monotonic):
        self.embedder = embedder
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._ready = False

    @property
    def model_loaded(self) -> bool:
        return self.embedder is not None

    def warm_up(self) -> bool:
        """Run the readiness inference before the first request; a failure is logged and reported, not raised."""
        ok = self()
        if not ok:
            log.error("warm-up failed: this worker reports unhealthy until an inference succeeds")
        return ok

    def healthy(self) -> bool:
        """Cheap: loaded, and the last readiness inference (the warm-up is the first) did not fail."""
        return self.model_loaded and (self._checked_at is None or self._ready)

    def __call__(self) -> bool:
        """Ready: a tiny real inference succeeded within the last ``ttl`` seconds."""
        with self._lock:  # concurrent probes share one inference
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                self._ready = self.model_loaded and self.embedder.probe(self._timeout)
                self._checked_at = self._clock()
            return self._ready
