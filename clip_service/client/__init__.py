"""A Python client for clip-service; needs numpy and requests only (no torch, Flask or open_clip).

    from clip_service.client import ClipClient

    with ClipClient("https://clip.example.run.app", api_key="...") as clip:
        result = clip.embed_images(["cat.jpg", "https://example.com/dog.png"])
        result.vectors        # (2, 512) float32; NaN rows where an image failed
        result.errors         # [FailedItem(index, code, message, source), ...]
"""

from .client import ClipClient
from .errors import (
    AuthenticationError,
    ClipClientError,
    DeadlineExceeded,
    NotAClipService,
    RequestRejected,
    ServiceUnavailable,
    ServiceUnreachable,
)
from .limits import Limits
from .results import Classifications, Embeddings, FailedItem, ModelInfo

__all__ = [
    "AuthenticationError", "Classifications", "ClipClient", "ClipClientError", "DeadlineExceeded", "Embeddings",
    "FailedItem", "Limits", "ModelInfo", "NotAClipService", "RequestRejected", "ServiceUnavailable",
    "ServiceUnreachable",
]
