"""A thread-safe LRU bounded in bytes, for numpy vectors (or any value with ``nbytes``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Iterable, Sequence


class LruCache:
    """Least-recently-used entries go first once the values' bytes pass ``max_bytes`` (0 holds nothing)."""

    def __init__(self, max_bytes: int, *, size_of: Callable[[object], int] = lambda value: value.nbytes):
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0  # held now
        self.evictions = 0  # since the start
        # Called as on_change(bytes_held, evicted) after each put; metrics hang here.
        self.on_change: Callable[[int, int], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[Hashable]) -> list:
        """The value for each key, or None; hits become the most recently used."""
        found = []
        with self._lock:
            for key in keys:
                value = self._entries.get(key)
                if value is not None:
                    self._entries.move_to_end(key)
                found.append(value)
        return found

    def clear(self) -> None:
        """Forget every entry (an operator's flush; tests that share one app)."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0
        if self.on_change is not None:
            self.on_change(0, 0)

    def put_many(self, items: Iterable[tuple[Hashable, object]]) -> None:
        evicted = 0
        with self._lock:
            for key, value in items:
                size = self._size_of(value)
                if size > self.max_bytes:
                    continue  # would evict everything and still not fit
                old = self._entries.pop(key, None)
                if old is not None:
                    self.bytes -= self._size_of(old)
                self._entries[key] = value
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self.bytes -= self._size_of(dropped)
                    evicted += 1
            self.evictions += evicted
            held = self.bytes
        if self.on_change is not None:
            self.on_change(held, evicted)
