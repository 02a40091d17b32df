"""Image inputs as the service takes them in ``urls``: http(s) URLs as they are, everything else a data URI.

A local file, bytes or a PIL image is sent inside the JSON body as
``data:image/<type>;base64,...`` rather than as multipart parts: one request
can then mix URLs and local images in one ``urls`` list (a multipart body
takes files only), the answer's ``errors`` index that one list, and the
service reads both through the same code with the same byte limit. The price
is base64's third more bytes on the wire, which is small next to a forward
pass. PIL is optional: a PIL image can only arrive if the caller imported it.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

# Standard library only, like this package: the service's own rules for data URIs and error names.
from ..images.sources import describe as describe_source
from ..images.sources import is_data_uri

# Magic numbers of the formats worth naming; any other bytes are still sent (the service says what is wrong).
_SIGNATURES = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
               (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Any]  # Any: a PIL image or a binary file


@dataclass(frozen=True)
class Unusable:
    """An input that cannot be sent at all (a file that cannot be read, a value of the wrong type)."""

    code: str
    message: str


def is_url(value: str) -> bool:
    return is_data_uri(value) or value[:8].lower().startswith(("http://", "https://"))


def describe(image: ImageInput) -> str:
    """How to name ``image`` in a FailedItem: the path or URL, never a data URI's payload."""
    if isinstance(image, str):
        return describe_source(image)
    if isinstance(image, os.PathLike):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if _is_pil_image(image):
        return "<PIL image>"
    return f"<{type(image).__name__}>"


def to_url(image: ImageInput) -> str | Unusable:
    """What to send for ``image`` in ``urls``, or why it cannot be sent."""
    if isinstance(image, str) and is_url(image):
        return image
    if isinstance(image, (str, os.PathLike)):
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            return Unusable("unreadable_file", f"cannot read {os.fspath(image)}: {exc.strerror or exc}")
        return data_uri(data)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return data_uri(bytes(image))
    if _is_pil_image(image):
        return data_uri(_png(image))
    if callable(getattr(image, "read", None)):
        try:
            data = image.read()
        except OSError as exc:
            return Unusable("unreadable_file", f"cannot read the file: {exc}")
        if isinstance(data, (bytes, bytearray)):
            return data_uri(bytes(data))
    return Unusable("invalid_input", f"an image must be a path, URL, bytes or PIL image, "
                                     f"not {type(image).__name__}")


def data_uri(data: bytes) -> str:
    """``data`` as a base64 data URI, with its image type when the bytes name one."""
    kind = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "webp"
    # Unknown bytes still go as image/*: the service decodes by content and says what is wrong.
    return f"data:image/{kind or 'unknown'};base64,{base64.b64encode(data).decode('ascii')}"


def _is_pil_image(value: Any) -> bool:
    image_module = sys.modules.get("PIL.Image")
    return image_module is not None and isinstance(value, image_module.Image)


def _png(image: Any) -> bytes:
    # PNG is lossless, so the service sees exactly these pixels; level 1 because the
    # bytes only cross to the service once, and encoding time is the caller's CPU.
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
