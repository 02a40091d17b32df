"""How the OpenAI-compatible API writes vectors and counts tokens."""

from __future__ import annotations

import base64
from typing import Sequence

import numpy as np


def encode_vector(vector: np.ndarray, encoding_format: str):
    """The vector itself (orjson writes it as numbers), or base64 of its little-endian float32 bytes as OpenAI sends."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def count_tokens(tokenizer, texts: Sequence[str]) -> int:
    """CLIP tokens of ``texts`` as the model sees them: start and end tokens included, at most the context each.

    Padding (id 0) only follows the end token, so a text's length is the
    position of its last non-zero id plus one (0 is also a rare real token).
    """
    if not texts:
        return 0
    tokens = np.asarray(tokenizer(list(texts)))
    positions = np.arange(1, tokens.shape[1] + 1)
    return int(((tokens != 0) * positions).max(axis=1).sum())
