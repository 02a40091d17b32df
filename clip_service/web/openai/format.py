"""How the OpenAI-compatible API writes vectors."""

from __future__ import annotations

import base64

import numpy as np


def encode_vector(vector: np.ndarray, encoding_format: str):
    """The vector itself (orjson writes it as numbers), or base64 of its little-endian float32 bytes as OpenAI sends."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
