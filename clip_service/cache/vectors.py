"""The vector cache: an in-process LRU, then optionally Redis; exact hits, and never a failed request."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from .keys import CacheKeys
from .memory import LruCache
from .redis_tier import RedisTier

log = logging.getLogger(__name__)

# A vector's bytes plus its key and the LRU's bookkeeping, so the byte bound holds for real.
ENTRY_OVERHEAD_BYTES = 200
# The model's vectors are unit vectors in float32 (bf16's products included: the norm is taken in fp32).
NORM_TOLERANCE = 1e-3
# Refused values are logged at most this often (all are counted).
LOG_INTERVAL_S = 60.0


def entry_size(vector: np.ndarray) -> int:
    return vector.nbytes + ENTRY_OVERHEAD_BYTES


def refusal(vector: np.ndarray, dimensions: int | None = None) -> str | None:
    """Why a cached value must not be served (``invalid_length``, ``invalid_nonfinite``, ``invalid_norm``), or None.

    A value is served only if it has ``dimensions`` values (when known), all finite, and unit norm.
    """
    if vector.ndim != 1 or (dimensions is not None and len(vector) != dimensions):
        return "invalid_length"
    if not np.isfinite(vector).all():
        return "invalid_nonfinite"
    # In float64: the squares of float32 values near their limit overflow float32.
    if abs(math.sqrt(float(np.dot(vector.astype(np.float64), vector.astype(np.float64)))) - 1.0) > NORM_TOLERANCE:
        return "invalid_norm"
    return None


class VectorCache:
    """Look vectors up by key in memory, then in Redis; store new ones in both.

    A value that is not a finite unit vector of the model's length (a Redis
    overwritten by hand, by another program, or corrupted) is refused: a miss,
    recomputed, and overwritten by the fresh vector. Refusals are counted and
    logged at most once a minute.
    """

    def __init__(self, keys: CacheKeys, *, max_bytes: int, redis: RedisTier | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.keys = keys
        self.memory = LruCache(max_bytes, size_of=entry_size) if max_bytes > 0 else None
        self.redis = redis
        self.dimensions = redis.dimensions if redis is not None else None
        # Called as on_lookup(modality, tier, result, count) for hits, misses and refused values
        # (result ``invalid_<reason>``); metrics hang here.
        self.on_lookup: Callable[[str, str, str, int], None] | None = None
        self._clock = clock
        self._refused: Counter[tuple[str, str]] = Counter()  # (tier, reason) since the last log line
        self._logged_at = -math.inf
        self._log_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.memory is not None or self.redis is not None

    def get_many(self, modality: str, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = [None] * len(keys)
        missing = list(range(len(keys)))
        if self.memory is not None:
            found = self._usable(modality, "memory", self.memory.get_many(keys))
            missing = [i for i, v in enumerate(found) if v is None]
        if self.redis is not None and missing:
            shared = self._usable(modality, "redis", self.redis.read_many([keys[i] for i in missing]))
            hits = [(i, v) for i, v in zip(missing, shared) if v is not None]
            for i, vector in hits:
                found[i] = vector
            if self.memory is not None and hits:
                self.memory.put_many((keys[i], v) for i, v in hits)
        return found

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        if not self.enabled:
            return
        # Copies: a vector must not keep its whole batch's array alive in the cache. Nothing
        # is stored that a reader would refuse (a model that produced NaN would make every hit a miss).
        items = [(key, copy) for key, vector in items
                 if refusal(copy := np.array(vector, dtype=np.float32), self.dimensions) is None]
        if self.memory is not None:
            self.memory.put_many(items)
        if self.redis is not None:
            self.redis.put_many(items)

    def _usable(self, modality: str, tier: str, values: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """``values`` with the refused ones replaced by None; hits, misses and refusals counted."""
        refused: Counter[str] = Counter()
        for i, value in enumerate(values):
            if value is not None and (reason := refusal(value, self.dimensions)) is not None:
                refused[reason] += 1
                values[i] = None
        misses = sum(v is None for v in values) - sum(refused.values())
        self._count(modality, tier, "hit", len(values) - misses - sum(refused.values()))
        self._count(modality, tier, "miss", misses)
        for reason, count in refused.items():
            self._count(modality, tier, reason, count)
        if refused:
            self._log_refused(tier, refused)
        return values

    def _count(self, modality: str, tier: str, result: str, count: int) -> None:
        if self.on_lookup is not None and count:
            self.on_lookup(modality, tier, result, count)

    def _log_refused(self, tier: str, refused: Counter[str]) -> None:
        with self._log_lock:
            self._refused.update({(tier, reason): count for reason, count in refused.items()})
            now = self._clock()
            if now - self._logged_at < LOG_INTERVAL_S:
                return
            counts, self._refused, self._logged_at = self._refused, Counter(), now
        log.warning("refused %d cached values that are not finite unit vectors%s (%s); they were recomputed "
                    "and overwritten", sum(counts.values()),
                    f" of {self.dimensions} floats" if self.dimensions else "",
                    ", ".join(f"{tier} {reason}: {count}" for (tier, reason), count in sorted(counts.items())))
