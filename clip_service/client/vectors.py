"""The dtypes a caller may ask for, the format each travels in, and an answer's rows as one numpy array.

The formats themselves (scale, bit order, base64) are ``clip_service.encodings``, the module the service
encodes with: numpy only, so the client reads exactly what the service wrote without importing torch or Flask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import encodings

# A dtype the caller asks for -> the service's encoding that carries it. float32 travels as base64 of its
# bytes: lossless, a quarter of JSON's bytes and no number parsing. The others are what they say.
WIRE_FORMATS = {"float32": "base64", "float16": "float16", "int8": "int8", "uint8": "uint8", "binary": "binary",
                "ubinary": "ubinary"}
DTYPES = tuple(WIRE_FORMATS)


def check_dtype(dtype: str) -> None:
    if dtype not in WIRE_FORMATS:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")


def wire_format(dtype: str, offered: frozenset[str]) -> str:
    """The encoding to ask the service for; "float" from a service that offers none (older than encodings)."""
    wanted = WIRE_FORMATS[dtype]
    return wanted if wanted in offered else "float"


def empty(count: int, dtype: str, dimensions: int) -> np.ndarray:
    """``count`` rows of ``dtype`` for the caller, each a failed row until filled: NaN, or 0 for integers."""
    fmt = WIRE_FORMATS[dtype]
    kind = encodings.DTYPES[fmt]
    fill = np.nan if kind.kind == "f" else 0
    return np.full((count, encodings.width(fmt, dimensions)), fill, dtype=kind.newbyteorder("="))


def row(value: Any, sent_as: str, dtype: str, dimensions: int) -> np.ndarray:
    """One vector of an answer, sent in ``sent_as``, as ``dtype``'s values; ValueError if it is not one."""
    values = encodings.decode(value, sent_as, dimensions)
    wanted = WIRE_FORMATS[dtype]
    if sent_as != wanted:  # a service without encodings sent floats: the same formulas, here
        values = encodings.quantize(values[None], wanted)[0]
    return values
