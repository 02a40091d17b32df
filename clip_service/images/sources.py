"""Images that arrive inside the request: base64 data: URIs and multipart uploads.

No network and no model here. Both are decoded by ``images.decode_image`` with
the fetcher's limits (bytes, pixels, formats, first frame only), so an image
costs the same at most however it arrives.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import BinaryIO

from PIL import Image

from .decoding import ImageDecodeError, decode_image

# The part before the comma is short ("data:image/jpeg;base64"); looking for the
# comma only this far keeps a malformed multi-megabyte URI from being scanned.
_MAX_HEADER_CHARS = 256
_WHITESPACE = re.compile(rb"\s+")


def is_data_uri(value: str) -> bool:
    return value[:5].lower() == "data:"


def is_image_data_uri(value: str) -> bool:
    return value[:11].lower() == "data:image/"


def describe(source: str) -> str:
    """A short, safe stand-in for ``source`` in an error entry: a data URI's header, never its payload."""
    if not is_data_uri(source):
        return source
    comma = source.find(",", 0, _MAX_HEADER_CHARS)
    header = source[:comma] if comma >= 0 else source[:32]
    return (header if header.isascii() and header.isprintable() else "data:") + ",..."


class LocalImages:
    """Decode images sent in the request itself, with the same limits as downloaded ones."""

    def __init__(self, *, max_bytes: int, max_pixels: int, draft_size: int | None = None):
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.draft_size = draft_size

    def from_data_uri(self, uri: str) -> Image.Image:
        """Decode ``data:image/<type>[;...];base64,<payload>``; raise ``ImageDecodeError`` saying why not."""
        return self._decode(self._data_uri_bytes(uri))

    def from_upload(self, stream: BinaryIO) -> Image.Image:
        """Decode an uploaded file, reading at most one byte past the limit."""
        data = stream.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise self._too_large()
        return self._decode(data)

    def _decode(self, data: bytes) -> Image.Image:
        return decode_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size)

    def _too_large(self) -> ImageDecodeError:
        return ImageDecodeError("too_large", f"the image is larger than {self.max_bytes} bytes")

    def _data_uri_bytes(self, uri: str) -> bytes:
        comma = uri.find(",", 0, _MAX_HEADER_CHARS)
        header = uri[5:comma].lower() if comma >= 0 else ""
        params = header.split(";")
        if comma < 0 or not params[0].startswith("image/") or params[-1] != "base64":
            raise ImageDecodeError("invalid_url", "a data URI must be data:image/<type>;base64,<data>")
        payload = uri[comma + 1:]
        # Refused by its length before anything is allocated (base64 is 4 characters per
        # 3 bytes; the slack allows for MIME line breaks), and exactly once decoded.
        if len(payload) > 4 * math.ceil(self.max_bytes / 3) * 1.1 + 64:
            raise self._too_large()
        try:
            raw = payload.encode("ascii")
        except UnicodeEncodeError:
            raise ImageDecodeError("invalid_url", "the data URI's base64 data is not valid") from None
        raw = _WHITESPACE.sub(b"", raw)
        if b"-" in raw or b"_" in raw:  # the URL-safe alphabet
            raw = raw.translate(bytes.maketrans(b"-_", b"+/"))
        raw += b"=" * (-len(raw) % 4)  # padding is often left off
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ImageDecodeError("invalid_url", "the data URI's base64 data is not valid") from None
        if len(data) > self.max_bytes:
            raise self._too_large()
        return data
