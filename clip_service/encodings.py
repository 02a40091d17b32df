"""Vector formats: float32 unit vectors to the compact types vector databases store, and back.

Pure numpy (no torch, no Flask): the service encodes every embedding route's
answer here, and the client (``clip_service.client``) decodes with the same
definitions, so two requests on two instances give the same bytes and the
client reads exactly what the service wrote. Every format is computed from
the float32 vector (the one the cache keeps), so a vector cached for one
format serves all.

===========  ==========================================  ============  ==================================
format       one vector in JSON                          512-d bytes   decoded back to float
===========  ==========================================  ============  ==================================
``float``    numbers                                     2048 (JSON    exact
                                                         ~6,300)
``base64``   base64 of its little-endian float32 bytes   2048          exact (OpenAI's encoding_format)
``float16``  base64 of its little-endian IEEE half bytes 1024          within 2**-12 (< 1e-3) a component
``int8``     integers, round(256 x) clipped to           512           within 1/512 a component in
             [-128, 127]                                               [-0.5, 0.498]; beyond, clipped
``uint8``    integers, the int8 value + 128              512           as int8
``binary``   integers, 8 signs a byte (bit 1: x > 0,     64            the sign of each component
             first dimension in the top bit), - 128
``ubinary``  integers, the same bytes unsigned           64            the sign of each component
===========  ==========================================  ============  ==================================

The int8 scale is fixed, not fitted to data: 256, so a step is 1/256 and a
unit vector's components in [-0.5, 127.5/256] are kept to half a step. Only a
component beyond +-0.5 is clipped; a unit vector has at most three of those
(four would be a norm above 1), while a 512-d unit vector's components are
1/sqrt(512) = 0.044 in root mean square. The binary formats are Cohere's
(``embedding_types``) and sentence-transformers' ``quantize_embeddings``:
``numpy.packbits(x > 0)``, and for ``binary`` each byte minus 128 as int8.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np

FORMATS = ("float", "base64", "float16", "int8", "uint8", "binary", "ubinary")
DEFAULT = "float"
# Formats whose JSON value is one base64 string; the others are lists of numbers.
STRING_FORMATS = frozenset({"base64", "float16"})
BINARY_FORMATS = frozenset({"binary", "ubinary"})
# int8 = round(INT8_SCALE x), clipped to int8: a power of two, so x * INT8_SCALE is exact in float32
# and the rounding (numpy's rint: half to even) is the only step, the same on every machine.
INT8_SCALE = 256
# uint8 = int8 + 128; binary = ubinary - 128 (Cohere's convention for packed bits as signed bytes).
OFFSET = 128
# What each format's values are, as numpy holds them (after decoding base64).
DTYPES = {"float": np.dtype("<f4"), "base64": np.dtype("<f4"), "float16": np.dtype("<f2"),
          "int8": np.dtype("i1"), "uint8": np.dtype("u1"), "binary": np.dtype("i1"), "ubinary": np.dtype("u1")}
# What a decoded value may differ from the float vector's component by (binary: only the sign is kept).
MAX_ERROR = {"float": 0.0, "base64": 0.0, "float16": 2.0 ** -12, "int8": 0.5 / INT8_SCALE,
             "uint8": 0.5 / INT8_SCALE}


def width(fmt: str, dimensions: int) -> int:
    """How many values a vector of ``dimensions`` has in ``fmt`` (binary: 8 dimensions a byte)."""
    return (dimensions + 7) // 8 if fmt in BINARY_FORMATS else dimensions


def quantize(vectors: np.ndarray, fmt: str) -> np.ndarray:
    """Rows of float vectors, (n, d), as ``fmt``'s values: (n, width(fmt, d)) of ``DTYPES[fmt]``."""
    _check(fmt)
    vectors = np.asarray(vectors, dtype=np.float32)
    if fmt in ("float", "base64"):
        return vectors
    if fmt == "float16":
        return vectors.astype(np.float16)
    if fmt in ("int8", "uint8"):
        levels = np.clip(np.rint(vectors * np.float32(INT8_SCALE)), -128, 127).astype(np.int16)
        return (levels + OFFSET).astype(np.uint8) if fmt == "uint8" else levels.astype(np.int8)
    bits = np.packbits(vectors > 0, axis=-1)  # first dimension in the top bit (numpy's default, Cohere's)
    return (bits.astype(np.int16) - OFFSET).astype(np.int8) if fmt == "binary" else bits


def to_json(vectors: np.ndarray, fmt: str) -> np.ndarray | list[str]:
    """Rows as an answer carries them: a numpy array (orjson writes its numbers) or one base64 string a row."""
    values = quantize(vectors, fmt)
    if fmt in STRING_FORMATS:
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in values]
    return values


def slots(vectors: Sequence[np.ndarray | None], fmt: str) -> list:
    """``to_json`` of each vector, with ``[]`` in the slot of a vector that is None (a failed image)."""
    good = [i for i, vector in enumerate(vectors) if vector is not None]
    out: list[Any] = [[] for _ in vectors]
    if good:
        for i, row in zip(good, to_json(np.stack([vectors[i] for i in good]), fmt)):
            out[i] = row
    return out


def by_types(vectors: Sequence[np.ndarray] | np.ndarray, types: Sequence[str]) -> list:
    """Each vector in ``types`` (Cohere's embedding_types): with one type its ``to_json`` value, with several
    an object with one key a type."""
    columns = {fmt: to_json(np.asarray(vectors, dtype=np.float32), fmt) for fmt in types}
    if len(types) == 1:
        return list(columns[types[0]])
    return [{fmt: column[i] for fmt, column in columns.items()} for i in range(len(vectors))]


def decode(row: Any, fmt: str, dimensions: int) -> np.ndarray:
    """One vector as an answer carries it, back to ``fmt``'s values (``DTYPES[fmt]``); ValueError if it is not one."""
    _check(fmt)
    dtype, expected = DTYPES[fmt], width(fmt, dimensions)
    if fmt in STRING_FORMATS:
        if not isinstance(row, str):
            raise ValueError(f"a {fmt} vector is a base64 string, not {type(row).__name__}")
        try:
            raw = base64.b64decode(row, validate=True)
        except ValueError:
            raise ValueError(f"a {fmt} vector is not valid base64") from None
        if len(raw) != expected * dtype.itemsize:
            raise ValueError(f"a {fmt} vector of {len(raw)} bytes, not {expected * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype)
    if not isinstance(row, list) or len(row) != expected:
        raise ValueError(f"a {fmt} vector of {len(row) if isinstance(row, list) else type(row).__name__} values, "
                         f"not {expected}")
    if fmt == "float":
        return np.asarray(row, dtype=dtype)
    try:
        return np.asarray(row, dtype=dtype)  # numpy refuses an integer out of the type's range
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"a {fmt} vector holds a value that is not a {dtype.name}") from None


def to_float(values: np.ndarray, fmt: str, dimensions: int | None = None) -> np.ndarray:
    """``fmt``'s values back to float32 vectors: exact, within MAX_ERROR[fmt], or (binary) +-1/sqrt(d) by sign."""
    _check(fmt)
    values = np.asarray(values)
    if fmt in ("float", "base64", "float16"):
        return values.astype(np.float32)
    if fmt in ("int8", "uint8"):
        levels = values.astype(np.float32) - (OFFSET if fmt == "uint8" else 0)
        return levels / np.float32(INT8_SCALE)
    bits = (values.astype(np.int16) + (OFFSET if fmt == "binary" else 0)).astype(np.uint8)
    signs = np.unpackbits(bits, axis=-1)
    if dimensions is not None:
        signs = signs[..., :dimensions]
    return (signs.astype(np.float32) * 2 - 1) / np.float32(np.sqrt(signs.shape[-1]))


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown vector format {fmt!r}; one of {', '.join(FORMATS)}")
