"""Values made lazily in each process: what the Gunicorn master makes must not leak into a forked worker.

Threads, semaphores and queues made in the master before the fork would be
copied into each worker half-alive (a thread does not survive ``fork``). A
``PerProcess`` value is made on first use in a process and forgotten in the
child right after every fork, so the worker makes its own.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

_instances: "weakref.WeakSet[PerProcess]" = weakref.WeakSet()


class PerProcess(Generic[T]):
    """``factory()``'s value, made once per process on first ``get()``."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._value: T | None = None
        self._made = False
        self._lock = threading.Lock()
        _instances.add(self)

    def get(self) -> T:
        if not self._made:
            with self._lock:
                if not self._made:
                    self._value = self._factory()
                    self._made = True
        return self._value  # type: ignore[return-value]

    @property
    def made(self) -> bool:
        """Whether this process has made its value yet."""
        return self._made

    def _forget(self) -> None:
        self._value = None
        self._made = False
        self._lock = threading.Lock()  # the parent's lock may have been held at the fork


def _forget_all_in_child() -> None:
    for instance in list(_instances):
        instance._forget()


os.register_at_fork(after_in_child=_forget_all_in_child)
