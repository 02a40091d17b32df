"""Where the rows go: a directory of Parquet part files, each written whole or not at all.

Resumption rests on one rule: a part file exists only once complete (it is
written under a temporary name, synced, then renamed), so after Ctrl-C, a
kill or a power cut every row in a part is safe and every row not in one is
redone. The ids already written are read back from the parts' ``id`` column
at start. A Parquet file cannot be appended to (its index is at the end), so
the output is the directory: ``out.parquet/part-000000.parquet``, ... which
pandas, pyarrow, DuckDB, Polars and Spark all read as one table. For
``out.npy`` the same parts live in ``out.npy.parts/`` and, once every item
has a row, ``out.npy`` (successful vectors, input order), ``out.ids.txt``
(their ids, one a line) and ``out.errors.csv`` are written from them.

The vectors are stored in the run's ``--dtype`` (``bulk.DTYPES``), a fixed-size list column of that type,
computed from the float32 vector by the service's own formulas (``clip_service/encodings.py``); the
dtype is in every part's metadata, and a resume with another one is refused.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import encodings
from . import DTYPES
from .inputs import InputError

METADATA_KEY = b"clip_service"
# A cell a spreadsheet would run as a formula (OWASP's CSV injection): ids come from file names, URLs and
# CSV/JSONL files, messages quote URLs. A leading ' makes such a cell text. (By hand: OWASP's rule is two
# lines; defusedcsv would add a dependency and characters of its own.)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Row:
    """One item's outcome: its vector, or an error code and message."""

    id: str
    modality: str
    vector: np.ndarray | None
    error_code: str | None = None
    error_message: str | None = None


# The Arrow type of each format --dtype stores (bulk.DTYPES).
ARROW_TYPES = {"float": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "ubinary": pa.uint8()}
# What a reader needs to turn each dtype's values back into a vector; in the vector column's metadata.
_READING = {
    "float32": "the L2-normalised vector",
    "float16": "the L2-normalised vector in IEEE half precision (within 2^-12 a component)",
    "int8": f"round({encodings.INT8_SCALE} x) of the L2-normalised vector x, clipped to [-128, 127]: "
            f"x = value / {encodings.INT8_SCALE} within 1/{2 * encodings.INT8_SCALE} for components in [-0.5, 0.498]",
    "binary": "the signs of the vector's components as bits (1: > 0), 8 dimensions a byte, the first dimension "
              "in the top bit (numpy.unpackbits)",
}


@dataclass(frozen=True)
class ModelStamp:
    """Which model made the vectors, and the dtype they are stored in; every part carries it, a resume must match."""

    model: str
    pretrained: str
    dimensions: int
    dtype: str = "float32"  # parts written before --dtype existed hold float32

    @property
    def format(self) -> str:
        """The service's format (encodings.FORMATS) of the stored values."""
        return DTYPES[self.dtype]

    @property
    def width(self) -> int:
        """How many values a stored vector has (binary: dimensions / 8)."""
        return encodings.width(self.format, self.dimensions)


def schema(dimensions: int, stamp: ModelStamp) -> pa.Schema:
    # ``dimensions`` is the stamp's: kept as an argument for callers that name it.
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("vector", pa.list_(ARROW_TYPES[stamp.format], stamp.width),  # null for a failed item
                 metadata={b"clip_service.dtype": stamp.dtype.encode(),
                           b"description": _READING[stamp.dtype].encode()}),
        pa.field("error_code", pa.string()),
        pa.field("error_message", pa.string()),
    ], metadata={METADATA_KEY: json.dumps(stamp.__dict__).encode()})


def vector_column(rows: Sequence[Row], stamp: ModelStamp) -> pa.FixedSizeListArray:
    """The ``vector`` column of ``rows`` in the stamp's dtype (null where a row has no vector)."""
    values = np.zeros((len(rows), stamp.width), dtype=encodings.DTYPES[stamp.format])
    for i, row in enumerate(rows):
        if row.vector is not None:
            values[i] = stored(row.vector, stamp)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), stamp.width,
                                             mask=pa.array([row.vector is None for row in rows]))


def stored(vector: np.ndarray, stamp: ModelStamp) -> np.ndarray:
    """``vector`` as the stamp's dtype stores it: a float vector is converted, one already of the dtype kept."""
    kind = encodings.DTYPES[stamp.format]
    vector = np.asarray(vector)
    if vector.dtype == kind and vector.shape == (stamp.width,):
        return vector
    if vector.dtype.kind == "f" and vector.shape == (stamp.dimensions,):
        return encodings.quantize(vector[None], stamp.format)[0]
    raise ValueError(f"a vector of {vector.shape} {vector.dtype} cannot be stored as {stamp.dtype}")


class PartStore:
    """A directory of part files: what is written, and how to add more."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.done: dict[str, str | None] = {}  # id -> its error code (None: it has a vector)
        self.stamp: ModelStamp | None = None
        self._next_part = 0
        self._lock_file = None

    def open(self) -> "PartStore":
        """Take the directory (one writer at a time), drop half-written parts, and read what is done."""
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(f"{self.directory} exists and is not an output directory of part files")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.directory / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another run is writing to {self.directory}") from None
        for leftover in self.directory.glob(".part-*.tmp"):
            leftover.unlink()  # a part that was being written when the run stopped: its rows are redone
        for part in self.parts():
            self._next_part = max(self._next_part, int(part.stem.split("-")[1]) + 1)
            stamp = read_stamp(part)
            if self.stamp is not None and stamp != self.stamp:
                raise InputError(f"{part} was made by another model than the parts before it")
            self.stamp = stamp
            table = pq.read_table(part, columns=["id", "error_code"])
            self.done.update(zip(table.column("id").to_pylist(), table.column("error_code").to_pylist()))
        return self

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def check_model(self, stamp: ModelStamp) -> None:
        """Refuse to mix vectors of two models, or of two dtypes, in one output."""
        if self.stamp is not None and self.stamp.dtype != stamp.dtype \
                and replace(self.stamp, dtype=stamp.dtype) == stamp:
            raise InputError(f"{self.directory} holds {self.stamp.dtype} vectors; this run asks for --dtype "
                             f"{stamp.dtype}: rerun with --dtype {self.stamp.dtype}, or choose another output")
        if self.stamp is not None and self.stamp != stamp:
            raise InputError(f"{self.directory} holds vectors of {self.stamp.model} ({self.stamp.pretrained}, "
                             f"{self.stamp.dimensions}-d); this run embeds with {stamp.model} ({stamp.pretrained}, "
                             f"{stamp.dimensions}-d): choose another output")
        self.stamp = stamp

    def drop_failed(self) -> int:
        """Remove the failed rows from the parts, so those items count as not done; return how many."""
        dropped = 0
        if all(code is None for code in self.done.values()):  # open() read every row's error code
            return dropped
        for part in self.parts():
            codes = pq.read_table(part, columns=["error_code"]).column("error_code")
            if codes.null_count == len(codes):
                continue  # no failed row in this part: its vectors need not be read
            table = pq.read_table(part)
            failed = table.column("error_code").is_valid()
            count = pc.sum(failed).as_py() or 0
            if not count:
                continue
            kept = table.filter(pc.invert(failed))
            if len(kept):
                self._write(kept, part)
            else:
                part.unlink()
            dropped += count
        for item_id, code in list(self.done.items()):
            if code is not None:
                del self.done[item_id]
        return dropped

    def write(self, rows: Sequence[Row]) -> None:
        """Add ``rows`` as one new part file (atomically)."""
        if not rows:
            return
        assert self.stamp is not None, "check_model() first"
        stamp = self.stamp
        table = pa.Table.from_arrays(
            [pa.array([r.id for r in rows], pa.string()), pa.array([r.modality for r in rows], pa.string()),
             vector_column(rows, stamp), pa.array([r.error_code for r in rows], pa.string()),
             pa.array([r.error_message for r in rows], pa.string())],
            schema=schema(stamp.dimensions, stamp))
        self._write(table, self.directory / f"part-{self._next_part:06d}.parquet")
        self._next_part += 1
        self.done.update((r.id, r.error_code) for r in rows)

    def _write(self, table: pa.Table, target: Path) -> None:
        temporary = self.directory / f".{target.name}.tmp"
        with open(temporary, "wb") as out:
            pq.write_table(table, out, compression="zstd")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
        # The rename itself must reach the disk before the rows count as written.
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read_stamp(part: Path) -> ModelStamp:
    metadata = pq.read_schema(part).metadata or {}
    try:
        stamp = ModelStamp(**json.loads(metadata[METADATA_KEY]))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{part} is not a part file written by clip-service embed") from None
    if stamp.dtype not in DTYPES:
        raise InputError(f"{part} holds {stamp.dtype} vectors, which this version cannot add to")
    return stamp


def npy_paths(output: Path) -> tuple[Path, Path, Path]:
    """(vectors, ids, errors) files of an ``.npy`` output."""
    stem = output.with_suffix("")
    return output, stem.with_name(stem.name + ".ids.txt"), stem.with_name(stem.name + ".errors.csv")


def export_npy(store: PartStore, output: Path, order: Iterable[str]) -> tuple[int, int]:
    """Write the ``.npy`` output from the parts, in the order of ``order``; return (vectors, errors)."""
    order = list(order)
    position: dict[str, int] = {}
    errors: dict[str, tuple[str, str, str]] = {}
    for part in store.parts():
        table = pq.read_table(part, columns=["id", "modality", "error_code", "error_message"])
        for item_id, modality, code, message in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            if code is None:
                position[item_id] = -1
            else:
                errors[item_id] = (modality, code, message or "")
    ok = [item_id for item_id in order if item_id in position]
    for i, item_id in enumerate(ok):
        position[item_id] = i
    vectors_path, ids_path, errors_path = npy_paths(output)
    dims = store.stamp.width if store.stamp else 0
    kind = encodings.DTYPES[store.stamp.format] if store.stamp else np.dtype(np.float32)
    temporary = vectors_path.with_name(f".{vectors_path.name}.tmp")
    # Filled part by part through a memory map, so a backfill of millions never sits in memory at once.
    vectors = np.lib.format.open_memmap(temporary, mode="w+", dtype=kind, shape=(len(ok), dims))
    for part in store.parts():
        table = pq.read_table(part, columns=["id", "vector"])
        rows = [(i, position.get(item_id, -1)) for i, item_id in enumerate(table.column("id").to_pylist())]
        rows = [(i, p) for i, p in rows if p >= 0]
        if rows:
            block = _vector_block(table.column("vector"), dims)
            vectors[[p for _, p in rows]] = block[[i for i, _ in rows]]
    vectors.flush()
    del vectors
    os.replace(temporary, vectors_path)
    _write_text(ids_path, "".join(item_id + "\n" for item_id in ok))
    with open(errors_path.with_name(f".{errors_path.name}.tmp"), "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "modality", "error_code", "error_message"])
        writer.writerows([spreadsheet_text(cell) for cell in (item_id, *errors[item_id])]
                         for item_id in order if item_id in errors)
    os.replace(errors_path.with_name(f".{errors_path.name}.tmp"), errors_path)
    return len(ok), sum(1 for item_id in order if item_id in errors)


def spreadsheet_text(cell: str) -> str:
    """``cell``, with a leading ' when a spreadsheet would read it as a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def remove_npy(output: Path) -> None:
    """Remove an ``.npy`` output's files (they are rewritten whole when a run completes)."""
    for path in npy_paths(output):
        path.unlink(missing_ok=True)


def _vector_block(column: pa.ChunkedArray, dims: int) -> np.ndarray:
    # A null (failed) slot still holds ``dims`` placeholder values in the child array.
    blocks = [np.asarray(chunk.values.slice(chunk.offset * dims, len(chunk) * dims)).reshape(-1, dims)
              for chunk in column.chunks]
    return np.concatenate(blocks) if blocks else np.zeros((0, dims), dtype=np.float32)


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, temporary.with_name(path.name))
