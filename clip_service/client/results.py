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


@dataclass
class Embeddings:
    """One float32 row per input, in order; a failed input's row is NaN and it has an entry in ``errors``."""

    vectors: np.ndarray
    errors: list[FailedItem] = field(default_factory=list)
    model: str = ""
    pretrained: str = ""

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

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
