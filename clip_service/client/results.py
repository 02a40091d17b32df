"""What the client's calls return: vectors or scores as numpy arrays, and each failed item as a value."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FailedItem:
    """One input that gave no result: its position, what it was, and why (``code`` as the service names it)."""

    index: int
    code: str
    message: str
    source: str  # the path or URL given, or <bytes>, <PIL image>, <text>


@dataclass(frozen=True)
class ModelInfo:
    model: str
    pretrained: str
    dimensions: int
    precision: str = ""  # "fp32" or "bf16", what the service computes in; "" from a service that does not say


@dataclass
class Embeddings:
    """One row per input, in order, of the asked ``dtype``; a failed input has an entry in ``errors`` and its row
    is NaN (0 for the integer dtypes).

    ``binary`` and ``ubinary`` rows hold 8 dimensions a byte (the first in the top bit), so they are
    ``dimensions / 8`` long.
    """

    vectors: np.ndarray
    errors: list[FailedItem] = field(default_factory=list)
    model: str = ""
    pretrained: str = ""
    dtype: str = "float32"  # float32, float16, int8, uint8, binary or ubinary
    model_dimensions: int | None = None  # the vectors' length before any packing
    precision: str = ""  # "fp32" or "bf16" (ModelInfo.precision): bf16 vectors differ from fp32's by ~1e-4 in cosine

    @property
    def dimensions(self) -> int:
        return self.model_dimensions if self.model_dimensions is not None else int(self.vectors.shape[1])

    @property
    def ok(self) -> np.ndarray:
        """True where the input has a vector."""
        mask = np.ones(len(self.vectors), dtype=bool)
        mask[[e.index for e in self.errors]] = False
        return mask

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass
class Classifications:
    """``scores[i, j]``: image i's score for ``labels[j]`` (NaN for a failed image, which is in ``errors``)."""

    labels: list[str]
    scores: np.ndarray
    errors: list[FailedItem] = field(default_factory=list)

    def ranked(self, index: int) -> list[tuple[str, float]]:
        """Image ``index``'s (label, score) pairs, highest score first; [] when it failed."""
        row = self.scores[index]
        if np.isnan(row).all():
            return []
        return [(self.labels[j], float(row[j])) for j in np.argsort(-row, kind="stable")]

    def __len__(self) -> int:
        return len(self.scores)
