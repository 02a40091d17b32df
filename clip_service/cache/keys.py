"""Cache keys: a digest of what made the vector (the model, its weights, the preprocessing) and of the content.

Two models, two checkpoints, or two preprocessing setups never share a key,
and the content is what the model saw: a text's token ids after truncation,
an image's bytes (never its URL: what a URL serves changes).
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import open_clip

from ..model.converted import META_WEIGHTS_SHA256, converted_metadata

# Bump when a change to the code changes the vectors for the same inputs.
FORMAT = "clip-service/vectors/1"


class WeightsIdentityInBackground:
    """``weights_identity(pretrained)``, computed by a thread started now.

    Hashing a 600 MB checkpoint takes about a second; started before the model
    loads, it runs beside the load (hashlib releases the GIL) and warms the page
    cache for it. Call ``result()`` before forking: the thread does not survive a fork.
    """

    def __init__(self, pretrained: str):
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(pretrained,), name="clip-weights-digest", daemon=True)
        self._thread.start()

    def _run(self, pretrained: str) -> None:
        try:
            self._value = weights_identity(pretrained)
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def weights_identity(pretrained: str) -> str:
    """A pretrained tag as it is (its files never change), or a checkpoint file by the SHA-256 of its bytes.

    A file written by ``python -m clip_service.model.convert`` carries the
    SHA-256 of its weights in its header: that is read instead, in no time.
    """
    if not os.path.isfile(pretrained):
        return f"tag:{pretrained}:open_clip-{open_clip.__version__}"
    try:
        recorded = converted_metadata(pretrained).get(META_WEIGHTS_SHA256)
    except Exception:  # not a readable safetensors file: its bytes decide
        recorded = None
    if recorded:
        return f"weights-sha256:{recorded}"
    digest = hashlib.sha256()
    with open(pretrained, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class CacheKeys:
    """Keys for one loaded model: ``text_key(token_row)`` and ``image_key(image_bytes)``."""

    def __init__(self, *, model_name: str, weights: str, device: str, prepacked: bool, preprocess: str,
                 draft_size: int | None, precision: str = "fp32"):
        model = f"{FORMAT}\0{model_name}\0{weights}\0{device}\0prepacked={prepacked}"
        # The exact arithmetic differs in the last bits between CPU and GPU, and with prepacking; bf16
        # products differ in the third digit. (fp32 adds nothing, so its keys are those of earlier versions.)
        model += f"\0precision={precision}" if precision != "fp32" else ""
        self._text = hashlib.blake2b(f"{model}\0text".encode(), digest_size=32)
        # The preprocessing (resize, crop, normalisation) and the JPEG draft decoding change an image's vector.
        self._image = hashlib.blake2b(f"{model}\0image\0{preprocess}\0draft={draft_size}".encode(), digest_size=32)

    def text_key(self, tokens: np.ndarray) -> bytes:
        """The key of one text from its row of token ids (padding is not content)."""
        digest = self._text.copy()
        row = np.asarray(tokens, dtype=np.int64)
        nonzero = np.flatnonzero(row)
        digest.update(row[:nonzero[-1] + 1 if len(nonzero) else 0].tobytes())
        return digest.digest()

    def image_key(self, data: bytes) -> bytes:
        """The key of one image from its encoded bytes."""
        digest = self._image.copy()
        digest.update(data)
        return digest.digest()
