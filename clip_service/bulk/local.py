"""Embed items in this process with the service's own pipeline (the same code, so the same vectors)."""

from __future__ import annotations

import contextlib
import io
import threading
import time

from ..config import Settings
from .inputs import Item
from .store import ModelStamp, Row


class LocalBackend:
    """The model and fetcher the CLIP_* settings describe, built as the service builds them."""

    def __init__(self, settings: Settings):
        import torch

        from ..runtime import build_pipeline

        # As each Gunicorn worker does: CLIP_TORCH_THREADS threads per pass, CLIP_BATCH_RUNNERS passes at once.
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(settings.batching.torch_threads)
        self.settings = settings
        self.pipeline = build_pipeline(settings)
        info = self.pipeline.info
        self.stamp = ModelStamp(info.model, info.pretrained, info.dimensions)
        # A batch is what one request could carry.
        self.batch_sizes = {"text": settings.limits.max_texts, "image": settings.limits.max_urls}
        # Calls of embed() under way, so close() can wait for their forward passes (see there).
        self._active = 0
        self._closing = False
        self._idle = threading.Condition()

    def embed(self, items: list[Item]) -> list[Row]:
        """Rows for ``items`` (all of one modality), in order."""
        from ..model.batching import Stopped

        with self._idle:
            if self._closing:
                raise Stopped("the run is stopping")
            self._active += 1
        try:
            return self._texts(items) if items[0].modality == "text" else self._images(items)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _texts(self, items: list[Item]) -> list[Row]:
        limit = self.settings.limits.max_text_chars
        rows: list[Row | None] = [
            Row(item.id, "text", None, "too_long", f"longer than the service's {limit} characters per text")
            if len(item.value) > limit else None for item in items]
        todo = [i for i, row in enumerate(rows) if row is None]
        vectors = self._retrying(lambda: self.pipeline.embed_texts([items[i].value for i in todo]).vectors)
        for i, vector in zip(todo, vectors):
            rows[i] = Row(items[i].id, "text", vector)
        return rows

    def _images(self, items: list[Item]) -> list[Row]:
        from ..pipeline import Upload

        rows: list[Row | None] = [None] * len(items)
        sources, positions = [], []
        with contextlib.ExitStack() as files:
            for i, item in enumerate(items):
                if item.data is not None:
                    sources.append(Upload(io.BytesIO(item.data)))
                elif item.is_path:
                    try:
                        sources.append(Upload(files.enter_context(open(item.value, "rb"))))
                    except OSError as exc:
                        rows[i] = Row(item.id, "image", None, "unreadable_file",
                                      f"cannot read {item.value}: {exc.strerror or exc}")
                        continue
                else:  # the fetcher's URL policy refuses a URL that is too long, as the service does
                    sources.append(item.value)
                positions.append(i)
            result = self._retrying(lambda: self.pipeline.embed_images(sources)) if sources else None
        if result is not None:
            failures = {f.index: f.error for f in result.failures}
            for j, i in enumerate(positions):
                error = failures.get(j)
                rows[i] = (Row(items[i].id, "image", None, error.code, error.message) if error
                           else Row(items[i].id, "image", result.vectors[j]))
        return rows

    def _retrying(self, call):
        from ..model.batching import Overloaded

        # The model's queue is full only when more batches run at once than it holds: wait, as a client would.
        delay = 0.05
        while True:
            try:
                return call()
            except Overloaded:
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def close(self, timeout: float = 120.0) -> None:
        """Start no more batches and wait for those under way: no forward pass may outlive the run.

        The run's threads are daemons; one still inside torch when the interpreter
        exits is killed there, and the process dies of SIGABRT ("terminate called
        without an active exception", exit 134) instead of exiting 130 or 143.
        """
        import torch

        deadline = time.monotonic() + timeout
        with self._idle:
            self._closing = True
        # The batchers' queued work fails at once; only the passes already running are waited for.
        self.pipeline.embedder.stop(max(0.0, deadline - time.monotonic()))
        # Without batching the passes run in the run's own threads, inside these calls.
        with self._idle:
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
        torch.set_num_threads(self._threads_before)  # a caller in the same process gets its threads back
