"""The ``map_batches`` step: the service's pipeline built once per actor; ids and sources in, vectors and errors out.

Each actor is a ``LocalBackend`` (bulk/local.py), so a row goes exactly the
way it goes through ``clip-service embed`` in-process and through the
service: ``runtime.build_pipeline``, the fetcher's URL policy and cost limits,
draft decoding within the decode budget, the vector cache and its keys, the
micro-batcher's forward passes. Ray runs ``concurrency`` batches at once in
each actor (``max_concurrent_calls_per_actor``), as the command's threads do,
so the actor's runners stay busy while other batches download and decode.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pyarrow as pa

from ...config import Settings
from .. import DTYPES
from ..inputs import Item, row_item
from ..store import METADATA_KEY, Row, schema, vector_column

# What a row may name, exactly one of (the command's CSV and JSONL columns, and an image's bytes).
CONTENT = ("text", "url", "path", "bytes")
# The columns the step writes (a batch's own columns of these names are replaced).
WRITTEN = ("modality", "vector", "error_code", "error_message")
# Not carried on: the object store would hold every image twice.
DROPPED = ("bytes",)


def actor_cpus(settings: Settings) -> float:
    """The cores one actor keeps busy: CLIP_BATCH_RUNNERS forward passes of CLIP_TORCH_THREADS threads each."""
    return settings.batching.runners * settings.batching.torch_threads


def embed_dataset(dataset, settings: Settings | None = None, *, actors: int = 1, concurrency: int = 4,
                  cpus_per_actor: float | None = None, gpus_per_actor: float = 0, batch_size: int | None = None,
                  dtype: str = "float32", verbose: bool = False):
    """``dataset.map_batches(ClipEmbed, ...)`` on a fixed pool of ``actors``; ``settings`` checked here, in the driver.

    ``settings`` default to the CLIP_* environment of this process (not of the
    workers'); a bad value raises ``ConfigError`` (every bad one, in one line)
    before any actor starts. ``batch_size`` defaults to the service's limit per
    request (CLIP_MAX_URLS); ``concurrency`` batches run at once in each actor;
    ``dtype`` is one of the command's ``--dtype`` (bulk.DTYPES).
    """
    import ray.data

    settings = Settings.from_env() if settings is None else settings
    settings.validate()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return dataset.map_batches(
        ClipEmbed, fn_constructor_kwargs={"settings": settings, "dtype": dtype, "verbose": verbose},
        batch_format="pyarrow", batch_size=batch_size or settings.limits.max_urls,
        compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=concurrency,
                                           enable_true_multi_threading=True,
                                           max_tasks_in_flight_per_actor=2 * concurrency),
        num_cpus=cpus_per_actor or actor_cpus(settings), num_gpus=gpus_per_actor or None)


class ClipEmbed:
    """For ``Dataset.map_batches``: a batch with an ``id`` column and text/url/path/bytes columns, embedded.

    Each row names exactly one of ``text``, ``url`` (http(s) or a ``data:``
    URI), ``path`` (a file every node can read at that path) and ``bytes``;
    anything else is a row with ``invalid_input``. A row that arrives with an
    ``error_code`` (it failed upstream) is kept as it is. The batch comes back
    with its other columns (not ``bytes``) and ``modality``, ``vector``
    (a fixed-size list of ``dtype``: float32 by default, or another of the
    command's ``--dtype`` values; null when the item failed), ``error_code`` and
    ``error_message``, the service's codes; its schema carries the model stamp
    that the part files of ``clip-service embed`` carry.
    """

    def __init__(self, settings: Settings, dtype: str = "float32", verbose: bool = False):
        from ..local import LocalBackend

        # As the command does: a warning per failed image is a row, not a log line, unless asked for.
        logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR)
        # The model loads here, once per actor (torch threads set first, as in each Gunicorn worker).
        self.backend = LocalBackend(settings)
        self.stamp = replace(self.backend.stamp, dtype=dtype)
        self.schema = schema(self.stamp.dimensions, self.stamp)

    def __call__(self, batch: Any) -> pa.Table:
        table = _as_table(batch)
        return self._table(table, self._rows(_items(table)))

    def _rows(self, items: list[Item]) -> list[Row]:
        rows: list[Row | None] = [Row(item.id, item.modality, None, *item.problem) if item.problem else None
                                  for item in items]
        for modality, size in self.backend.batch_sizes.items():
            todo = [i for i, item in enumerate(items) if rows[i] is None and item.modality == modality]
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                for i, row in zip(chunk, self.backend.embed([items[i] for i in chunk])):
                    rows[i] = row
        return rows

    def _table(self, table: pa.Table, rows: list[Row]) -> pa.Table:
        out = pa.Table.from_arrays([
            pa.array([r.id for r in rows], pa.string()), pa.array([r.modality for r in rows], pa.string()),
            vector_column(rows, self.stamp), pa.array([r.error_code for r in rows], pa.string()),
            pa.array([r.error_message for r in rows], pa.string())], schema=self.schema)
        kept = [name for name in table.column_names if name not in ("id", *WRITTEN, *DROPPED)]
        for position, name in enumerate(kept, 1):  # the batch's own columns after the id, as they came
            out = out.add_column(position, table.schema.field(name), table.column(name))
        return out


def _as_table(batch: Any) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas, when called with batch_format="pandas"
        return pa.Table.from_pandas(batch, preserve_index=False)
    return pa.table({name: list(values) for name, values in batch.items()})


def _items(table: pa.Table) -> list[Item]:
    """The batch's rows as the command's items (a row's problem, if any, as its error)."""
    names = set(table.column_names)
    if "id" not in names:
        raise ValueError(f"ClipEmbed needs an id column; the batch has {sorted(names)}")
    size = len(table)

    def column(name: str) -> list:
        return table.column(name).to_pylist() if name in names else [None] * size

    ids = column("id")
    content = {name: column(name) for name in CONTENT if name in names}
    codes, messages, modalities = column("error_code"), column("error_message"), column("modality")
    items = []
    for i, raw_id in enumerate(ids):
        if raw_id is None:
            raise ValueError(f"row {i} of a batch has no id (resuming and joining rest on ids)")
        item_id = str(raw_id)
        if codes[i] is not None:
            items.append(Item(item_id, modalities[i] or "image", "", problem=(codes[i], messages[i] or "")))
        else:
            items.append(row_item(item_id, {name: values[i] for name, values in content.items()
                                            if values[i] not in (None, "", b"")}, columns=CONTENT))
    return items


def stamp_of(table: pa.Table) -> dict | None:
    """The model stamp a batch's schema carries (as ``store.ModelStamp``'s fields), or None."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None
