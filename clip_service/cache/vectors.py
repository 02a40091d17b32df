"""The vector cache: an in-process LRU, then optionally Redis; exact hits, and never a failed request."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .keys import CacheKeys
from .memory import LruCache
from .redis_tier import RedisTier

# A vector's bytes plus its key and the LRU's bookkeeping, so the byte bound holds for real.
ENTRY_OVERHEAD_BYTES = 200


def entry_size(vector: np.ndarray) -> int:
    return vector.nbytes + ENTRY_OVERHEAD_BYTES


class VectorCache:
    """Look vectors up by key in memory, then in Redis; store new ones in both."""

    def __init__(self, keys: CacheKeys, *, max_bytes: int, redis: RedisTier | None = None):
        self.keys = keys
        self.memory = LruCache(max_bytes, size_of=entry_size) if max_bytes > 0 else None
        self.redis = redis
        # Called as on_lookup(modality, tier, result, count) for hits and misses; metrics hang here.
        self.on_lookup: Callable[[str, str, str, int], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.memory is not None or self.redis is not None

    def get_many(self, modality: str, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = [None] * len(keys)
        missing = list(range(len(keys)))
        if self.memory is not None:
            found = self.memory.get_many(keys)
            missing = [i for i, v in enumerate(found) if v is None]
            self._count(modality, "memory", len(keys) - len(missing), len(missing))
        if self.redis is not None and missing:
            shared = self.redis.get_many([keys[i] for i in missing])
            hits = [(i, v) for i, v in zip(missing, shared) if v is not None]
            for i, vector in hits:
                found[i] = vector
            if self.memory is not None and hits:
                self.memory.put_many((keys[i], v) for i, v in hits)
            self._count(modality, "redis", len(hits), len(missing) - len(hits))
        return found

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        if not self.enabled:
            return
        # Copies: a vector must not keep its whole batch's array alive in the cache.
        items = [(key, np.array(vector, dtype=np.float32)) for key, vector in items]
        if self.memory is not None:
            self.memory.put_many(items)
        if self.redis is not None:
            self.redis.put_many(items)

    def _count(self, modality: str, tier: str, hits: int, misses: int) -> None:
        if self.on_lookup is not None:
            if hits:
                self.on_lookup(modality, tier, "hit", hits)
            if misses:
                self.on_lookup(modality, tier, "miss", misses)
