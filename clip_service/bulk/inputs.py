"""What to embed: the items of a folder, a text file of URLs, or a CSV/JSONL file, each with a unique id."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

# Files a folder contributes, by suffix. Formats the service cannot decode (TIFF, HEIC, AVIF...)
# are included on purpose: they become rows with unsupported_format instead of vanishing.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
                            ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico"})
CONTENT_COLUMNS = ("text", "url", "path")
# What str.splitlines() splits on: an id holding one could not be listed one a line (name.ids.txt).
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


class InputError(Exception):
    """INPUT cannot be read as a list of items (not a bad item: a bad listing)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to embed: ``value`` is the text, the URL or the local file's path (or ``data``, an image's bytes)."""

    id: str
    modality: str  # "text" or "image"
    value: str
    is_path: bool = False
    problem: tuple[str, str] | None = None  # (code, message) when the row fails without being sent
    data: bytes | None = None  # an image given as its bytes (a Ray dataset's bytes column), not by name


def read_items(source: str | os.PathLike) -> list[Item]:
    """The items of ``source``, in a stable order; InputError when it cannot be listed or ids repeat."""
    path = Path(source)
    if path.is_dir():
        items = list(_folder(path))
    elif not path.exists():
        raise InputError(f"{path} does not exist")
    else:
        suffix = path.suffix.lower()
        try:
            with path.open(encoding="utf-8-sig", newline="") as lines:
                if suffix == ".csv":
                    items = list(_table(csv.DictReader(lines), path, "CSV"))
                elif suffix in (".jsonl", ".ndjson"):
                    items = list(_table(_json_lines(lines, path), path, "JSONL"))
                else:
                    items = list(_url_lines(lines))
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text") from None
        except (OSError, csv.Error) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
    _check_unique(items, path)
    return [_with_line_break_problem(item) for item in items]


def _folder(root: Path) -> Iterator[Item]:
    def fail(exc: OSError):
        raise InputError(f"cannot list {exc.filename}: {exc.strerror}")

    for directory, subdirs, files in os.walk(root, onerror=fail):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            full = os.path.join(directory, name)
            yield Item(_text_id(Path(os.path.relpath(full, root)).as_posix()), "image", full, is_path=True)


def _url_lines(lines: Iterable[str]) -> Iterator[Item]:
    seen = set()
    for line in lines:
        url = line.strip()
        if not url or url.startswith("#") or url in seen:
            continue  # a URL listed twice is embedded once
        seen.add(url)
        yield Item(url, "image", url)


def _json_lines(lines: Iterable[str], path: Path) -> Iterator[dict]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}, line {number}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}, line {number}: not a JSON object")
        yield row


def _table(rows: Iterable[dict], path: Path, kind: str) -> Iterator[Item]:
    base = path.parent
    for number, row in enumerate(rows, 1):
        if number == 1 and ("id" not in row or not any(c in row for c in CONTENT_COLUMNS)):
            raise InputError(f"{path}: a {kind} input needs an id column and a text, url or path column")
        raw_id = row.get("id")
        if raw_id is None or str(raw_id).strip() == "":
            raise InputError(f"{path}, row {number}: no id")
        item_id = _text_id(str(raw_id))
        yield row_item(item_id, {c: row[c] for c in CONTENT_COLUMNS if row.get(c) not in (None, "")}, base=base)


def row_item(item_id: str, given: dict[str, Any], *, base: Path | None = None,
             columns: Sequence[str] = CONTENT_COLUMNS) -> Item:
    """The item of a row whose non-empty content columns are ``given`` (exactly one of ``columns`` is valid).

    A ``path`` is taken relative to ``base`` when there is one; ``bytes`` (Ray's batches) are an image's file.
    """
    if len(given) != 1:
        names = ", ".join(columns[:-1]) + " and " + columns[-1]
        problem = ("invalid_input", f"the row has none of {names}" if not given
                   else f"the row has more than one of {names} ({', '.join(given)})")
        return Item(item_id, "text" if "text" in given else "image", "", problem=problem)
    column, value = next(iter(given.items()))
    if column == "bytes":
        if isinstance(value, (bytes, bytearray, memoryview)):
            return Item(item_id, "image", "", data=bytes(value))
        return Item(item_id, "image", "", problem=("invalid_input", "bytes must be binary"))
    if not isinstance(value, str):
        return Item(item_id, "text" if column == "text" else "image", "",
                    problem=("invalid_input", f"{column} must be a string"))
    if column == "text":
        return Item(item_id, "text", value)
    if column == "url":
        return Item(item_id, "image", value.strip())
    return Item(item_id, "image", str(base / value) if base is not None else value, is_path=True)


def _text_id(value: str) -> str:
    # A file name that is not UTF-8 arrives with surrogate escapes; spell them out so the id can be stored.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_unique(items: list[Item], path: Path) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise InputError(f"{path}: the id {item.id!r} appears more than once (ids must be unique to resume)")
        seen.add(item.id)


def _with_line_break_problem(item: Item) -> Item:
    """An item whose id holds a line break fails as a row of its own, as every other bad item does."""
    if item.problem or LINE_BREAKS.isdisjoint(item.id):
        return item
    return replace(item, problem=("invalid_input", f"the id {item.id!r} holds a line break (ids are listed one a "
                                                   "line): rename the file, or choose another id"))
