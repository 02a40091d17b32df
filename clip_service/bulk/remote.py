"""Embed items with a running service, through ``ClipClient`` (no torch needed)."""

from __future__ import annotations

from pathlib import Path

from ..client import ClipClient
from . import DTYPES
from .inputs import Item
from .store import ModelStamp, Row


class RemoteBackend:
    """Send each batch to the service at ``url``; the batch sizes are the service's own limits."""

    def __init__(self, url: str, *, api_key: str | None, concurrency: int, timeout: float, deadline: float,
                 dtype: str = "float32"):
        self.client = ClipClient(url, api_key=api_key, timeout=timeout, deadline=deadline, pool_size=concurrency)
        info = self.client.check()  # a wrong URL or key stops here, before anything is read or written
        self.stamp = ModelStamp(info.model, info.pretrained, info.dimensions, dtype)
        # The vectors travel as they are stored (the client's dtypes are the service's formats; float as float32).
        self.dtype = "float32" if DTYPES[dtype] == "float" else DTYPES[dtype]
        limits = self.client.limits()
        self.batch_sizes = {"text": limits.max_texts, "image": limits.max_urls}

    def embed(self, items: list[Item]) -> list[Row]:
        """Rows for ``items`` (all of one modality), in order."""
        if items[0].modality == "text":
            result = self.client.embed_texts([item.value for item in items], dtype=self.dtype)
        else:
            # A Path is always read as a file, even one whose name looks like a URL.
            result = self.client.embed_images([Path(item.value) if item.is_path else item.value for item in items],
                                              dtype=self.dtype)
        errors = {error.index: error for error in result.errors}
        return [Row(item.id, item.modality, None, errors[i].code, errors[i].message) if i in errors
                else Row(item.id, item.modality, result.vectors[i]) for i, item in enumerate(items)]

    def close(self) -> None:
        self.client.close()
