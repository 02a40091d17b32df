"""The bulk loop: items not yet written, in batches, through a backend on N threads, into part files.

Rows are flushed as a part every ``flush_rows`` rows or ``flush_seconds``
seconds, and on the way out of any stop (the end, Ctrl-C, SIGTERM, a fatal
error), so an interruption loses at most the batches still in flight; a
SIGKILL loses at most the rows since the last part. The worker threads are
daemons: a stop does not wait for their requests; the in-process backend's
``close()`` waits for the forward passes under way, which must not outlive
the interpreter.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Protocol

from .inputs import Item
from .progress import Progress, Tally
from .store import ModelStamp, PartStore, Row


class Backend(Protocol):
    stamp: ModelStamp
    batch_sizes: dict[str, int]

    def embed(self, items: list[Item]) -> list[Row]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Options:
    concurrency: int = 4
    batch_size: int | None = None  # at most the backend's own batch size
    flush_rows: int = 5000
    flush_seconds: float = 30.0
    retry_failed: bool = False
    progress: bool = False
    dtype: str = "float32"  # what the vectors are stored as (bulk.DTYPES)


class BulkRun:
    """One run over ``items``: what is left to do is decided at construction, ``execute()`` does it."""

    def __init__(self, items: list[Item], store: PartStore, backend: Backend, options: Options):
        # The backend's vectors, stored in the run's dtype (a resume with another one is refused).
        store.check_model(replace(backend.stamp, dtype=options.dtype))
        if options.retry_failed:
            store.drop_failed()
        self.todo = [item for item in items if item.id not in store.done]
        self.tally = Tally(total=len(items), already=len(items) - len(self.todo))
        self.store, self.backend, self.options = store, backend, options

    def execute(self) -> Tally:
        """Embed every item without a row; the counts stay in ``tally`` whatever ends the run."""
        options, store = self.options, self.store
        progress = Progress(self.tally, options.progress)
        sizes = {m: max(1, min(options.batch_size or n, n)) for m, n in self.backend.batch_sizes.items()}
        tasks: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()
        for n in range(options.concurrency):
            threading.Thread(target=_work, args=(self.backend, tasks, results), daemon=True,
                             name=f"embed-{n}").start()

        buffer: list[Row] = [Row(i.id, i.modality, None, *i.problem) for i in self.todo if i.problem]
        progress.advance(0, len(buffer))
        batches = _batches((i for i in self.todo if not i.problem), sizes)
        last_flush = time.monotonic()
        in_flight, exhausted = 0, False
        try:
            while True:
                # Keep every thread busy with one batch queued behind it, never the whole input at once.
                while not exhausted and in_flight < 2 * options.concurrency:
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                    else:
                        tasks.put(batch)
                        in_flight += 1
                if not in_flight:
                    break
                wait = max(0.05, last_flush + options.flush_seconds - time.monotonic())
                try:
                    rows, error = results.get(timeout=wait)
                except queue.Empty:
                    rows, error = None, None
                else:
                    in_flight -= 1
                if error is not None:
                    raise error
                if rows:
                    buffer.extend(rows)
                    failed = sum(row.vector is None for row in rows)
                    progress.advance(len(rows) - failed, failed)
                if len(buffer) >= options.flush_rows or time.monotonic() - last_flush >= options.flush_seconds:
                    store.write(buffer)
                    buffer, last_flush = [], time.monotonic()
        finally:
            _stop_workers(tasks, options.concurrency)
            # Whatever ended the loop, the rows that came back are kept.
            store.write(buffer)
            progress.close()
        return self.tally


def _batches(items: Iterable[Item], sizes: dict[str, int]) -> Iterator[list[Item]]:
    """Items in input order, grouped by modality into batches of ``sizes[modality]``."""
    pending: dict[str, list[Item]] = {modality: [] for modality in sizes}
    for item in items:
        group = pending[item.modality]
        group.append(item)
        if len(group) >= sizes[item.modality]:
            yield group
            pending[item.modality] = []
    for group in pending.values():
        if group:
            yield group


def _stop_workers(tasks: queue.Queue, count: int) -> None:
    """Drop the batches not started yet and tell each thread to end after its current one."""
    try:
        while True:
            tasks.get_nowait()
    except queue.Empty:
        pass
    for _ in range(count):
        tasks.put(None)


def _work(backend: Backend, tasks: queue.Queue, results: queue.Queue) -> None:
    while True:
        batch = tasks.get()
        if batch is None:
            return
        try:
            results.put((backend.embed(batch), None))
        except BaseException as exc:  # handed to the main thread, which decides
            results.put((None, exc))
