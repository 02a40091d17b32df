"""``clip-service embed --ray``: the items not yet written, as a Ray Data job; its rows into the same part files.

The driver (this process) reads INPUT, opens OUT and decides what is left, as
the other modes do (bulk/run.py); the items travel to the actors as Arrow
blocks, and the rows come back to be written here, through ``PartStore``: the
same layout, the same atomic parts, the same resumption. Before the job, one
Ray task loads the model as the actors will (``probe``): a model that cannot
load is the service's one line and exit 3, not an actor's traceback, and the
output's model stamp is checked before any work. Paths are read by the
actors: on a cluster, files must be where every node sees them at the same path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import pyarrow as pa

from ...config import Settings
from ..inputs import Item
from ..progress import Tally
from ..store import ModelStamp, PartStore, Row
from .actor import actor_cpus, embed_dataset

# The columns of the blocks the driver sends (a row names one of text, url, path; or comes failed).
BLOCK_SCHEMA = pa.schema([("id", pa.string()), ("modality", pa.string()), ("text", pa.string()),
                          ("url", pa.string()), ("path", pa.string()), ("error_code", pa.string()),
                          ("error_message", pa.string())])


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: $RAY_ADDRESS if set (as under `ray job submit`), else a local Ray
    actors: int = 1
    concurrency: int = 4  # batches at once in each actor
    cpus_per_actor: float | None = None  # default: CLIP_BATCH_RUNNERS x CLIP_TORCH_THREADS
    gpus_per_actor: float = 0
    batch_size: int | None = None  # default: the service's limit per request (CLIP_MAX_URLS)
    dtype: str = "float32"  # what the vectors are stored as (bulk.DTYPES)
    flush_rows: int = 5000
    flush_seconds: float = 30.0
    retry_failed: bool = False
    progress: bool = False  # Ray Data's progress bars on stderr
    verbose: bool = False


class ClusterError(Exception):
    """Ray cannot run the job: unreachable, no clip-service on its workers, a failed task (one line)."""


class ModelCannotLoad(Exception):
    """The workers cannot load the weights the settings name: the service's ``ModelLoadError`` (exit 3), told here.

    (Not that class itself: importing the model layer would import torch into a driver that needs none.)
    """


class RayJob:
    """One run over ``items`` on Ray: what is left is decided at construction, ``execute()`` does it."""

    def __init__(self, items: list[Item], store: PartStore, settings: Settings, options: RayOptions):
        settings.validate()
        done = store.done
        # With --retry-failed the failed rows are removed once the model is known to match (execute()).
        self.todo = [item for item in items
                     if item.id not in done or (options.retry_failed and done[item.id] is not None)]
        self.tally = Tally(total=len(items), already=len(items) - len(self.todo))
        self.store, self.settings, self.options = store, settings, options

    def execute(self) -> Tally:
        """Embed every item without a row; the counts stay in ``tally`` whatever ends the run."""
        if not self.todo:
            return self.tally
        import ray.data

        options = self.options
        with connected(options.address, options.verbose):
            stamp = replace(probe(self.settings, options), dtype=options.dtype)
            self.store.check_model(stamp)
            if options.retry_failed:
                self.store.drop_failed()
            _ray_data_output(options.progress, options.verbose)
            size = options.batch_size or self.settings.limits.max_urls
            dataset = embed_dataset(
                ray.data.from_arrow(list(_blocks(self.todo, size))), self.settings, actors=options.actors,
                concurrency=options.concurrency, cpus_per_actor=options.cpus_per_actor,
                gpus_per_actor=options.gpus_per_actor, batch_size=size, dtype=options.dtype, verbose=options.verbose)
            self.tally.started = time.monotonic()  # the job itself: actors' start-up included, the probe not
            self._collect(dataset, stamp)
        return self.tally

    def _collect(self, dataset, stamp: ModelStamp) -> None:
        import ray.exceptions

        options, store, tally = self.options, self.store, self.tally
        buffer: list[Row] = []
        last_flush = time.monotonic()
        try:
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                rows = _rows(batch, stamp)
                failed = sum(row.vector is None for row in rows)
                tally.embedded += len(rows) - failed
                tally.failed += failed
                buffer.extend(rows)
                if len(buffer) >= options.flush_rows or time.monotonic() - last_flush >= options.flush_seconds:
                    store.write(buffer)
                    buffer, last_flush = [], time.monotonic()
        except ray.exceptions.RayError as exc:
            raise ClusterError(f"the Ray job failed: {_one_line(exc)}") from None
        finally:
            store.write(buffer)  # whatever ended the loop, the rows that came back are kept


def probe(settings: Settings, options: RayOptions) -> ModelStamp:
    """Load the model in one Ray task with an actor's resources: its stamp, or why the actors could not."""
    import ray

    task = ray.remote(_load_model).options(num_cpus=options.cpus_per_actor or actor_cpus(settings),
                                           num_gpus=options.gpus_per_actor or None)
    try:
        kind, value = ray.get(task.remote(settings))
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"the Ray workers cannot run clip-service ({_one_line(exc)}): install "
                           "'clip-service[server,ray]' where they run, at the version of this driver") from None
    if kind == "model":
        raise ModelCannotLoad(value)
    if kind == "error":
        raise ClusterError(f"a Ray worker cannot load the model: {value}")
    return value


def _load_model(settings: Settings) -> tuple[str, object]:
    # Runs on a worker; returns rather than raises, so Ray prints no traceback and the driver says one line.
    from ...model.errors import ModelLoadError, short_cause
    from ..local import LocalBackend

    logging.getLogger().setLevel(logging.ERROR)  # open_clip's notes at load: the actors' to show, with --verbose
    try:
        backend = LocalBackend(settings)
    except ModelLoadError as exc:
        return "model", str(exc)
    except Exception as exc:  # noqa: BLE001 - any reason, told in one line by the driver
        return "error", f"{type(exc).__name__}: {short_cause(exc)}"
    backend.close()
    return "stamp", backend.stamp


@contextlib.contextmanager
def connected(address: str | None, verbose: bool) -> Iterator[None]:
    """Ray at ``address`` (or $RAY_ADDRESS, or a new local one) for the block; a Ray already connected is used."""
    import ray

    if ray.is_initialized():  # the caller's own (a notebook, a test): left as it is
        yield
        return
    quiet = logging.INFO if verbose else logging.WARNING
    where = address or os.environ.get("RAY_ADDRESS")
    local = not where
    if where and where not in ("auto", "local"):
        _answers(where)
    # ray.init sets a SIGTERM handler that exits with status 15: the command's own (exit 143, its line) is put back.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, logging_level=quiet, **({"include_dashboard": False} if local else {}))
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError...: one line
        raise ClusterError(f"cannot connect to Ray at {where or 'a new local Ray'}: {_one_line(exc)}") from None
    finally:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield
    finally:
        ray.shutdown()


def _ray_data_output(progress: bool, verbose: bool) -> None:
    """Ray Data's bars with --progress (where stdout is no terminal, its progress lines: INFO), its plan with
    --verbose too; with neither, its warnings only, and not the one that says the bars are off."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    shown = progress or verbose
    logging.getLogger("ray.data").setLevel(logging.INFO if shown else logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.INFO if shown else logging.ERROR)


def _answers(address: str, timeout: float = 10.0) -> None:
    """Raise ClusterError unless something accepts a connection at ``address`` (ray.init would wait for minutes)."""
    host, colon, port = address.split("://")[-1].rpartition(":")
    if not colon:
        return  # no port (ray://head): Ray's default, Ray's own check
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise ClusterError(f"{address!r} is not a Ray address (ray://host:10001, host:6379, auto)") from None
    except OSError as exc:
        raise ClusterError(f"cannot connect to Ray at {address}: {exc.strerror or exc}") from None


def _blocks(items: list[Item], size: int) -> Iterator[pa.Table]:
    """The items as Arrow tables of ``size`` rows, in input order (a block is a batch: nothing is re-cut)."""
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield pa.Table.from_pydict({
            "id": [item.id for item in chunk],
            "modality": [item.modality for item in chunk],
            "text": [item.value if not item.problem and item.modality == "text" else None for item in chunk],
            "url": [item.value if not item.problem and item.modality == "image" and not item.is_path else None
                    for item in chunk],
            # Absolute, as the actors' working directory is not this one.
            "path": [os.path.abspath(item.value) if not item.problem and item.is_path else None for item in chunk],
            "error_code": [item.problem[0] if item.problem else None for item in chunk],
            "error_message": [item.problem[1] if item.problem else None for item in chunk],
        }, schema=BLOCK_SCHEMA)


def _rows(batch: pa.Table, stamp: ModelStamp) -> list[Row]:
    from .actor import stamp_of

    if stamp_of(batch) != stamp.__dict__:
        raise ClusterError(f"a Ray worker embedded with another model ({stamp_of(batch)}) than the probe "
                           f"({stamp.__dict__}): are the nodes' weights the same?")
    width = stamp.width  # values a stored vector has (binary: dimensions / 8)
    column = batch.column("vector").combine_chunks()
    # A null (failed) slot still holds ``width`` placeholder values in the child array.
    values = np.asarray(column.values.slice(column.offset * width, len(column) * width)).reshape(-1, width)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    ids, modalities, codes, messages = (batch.column(name).to_pylist()
                                        for name in ("id", "modality", "error_code", "error_message"))
    return [Row(ids[i], modalities[i], values[i] if valid[i] else None, codes[i], messages[i])
            for i in range(len(ids))]


def _one_line(exc: BaseException) -> str:
    """The first line of a task's own exception (inside Ray's), or of ``exc``: Ray's own run for pages."""
    cause = getattr(exc, "cause", None)
    exc = cause if isinstance(cause, BaseException) else exc
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
