"""Images that arrive inside the request: base64 ``data:`` URIs and uploaded files.

No network, no decoding and no model here: each source becomes bytes, with
the same byte limit as a download, and is then decoded like a downloaded
image (the same pixel limit, formats and first frame only), so an image
costs the same at most however it arrives.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import BinaryIO

from .errors import ItemError

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


def too_large(max_bytes: int) -> ItemError:
    return ItemError("too_large", f"the image is larger than {max_bytes} bytes")


def read_upload(stream: BinaryIO, max_bytes: int) -> bytes:
    """An uploaded file's bytes, reading at most one byte past the limit."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data


def data_uri_bytes(uri: str, max_bytes: int) -> bytes:
    """The image bytes of ``data:image/<type>[;...];base64,<payload>``; raise ``ItemError`` saying why not.

    Line breaks, missing padding and the URL-safe alphabet are accepted.
    """
    comma = uri.find(",", 0, _MAX_HEADER_CHARS)
    header = uri[5:comma].lower() if comma >= 0 else ""
    params = header.split(";")
    if comma < 0 or not params[0].startswith("image/") or params[-1] != "base64":
        raise ItemError("invalid_url", "a data URI must be data:image/<type>;base64,<data>")
    payload = uri[comma + 1:]
    # Refused by its length before anything is allocated (base64 is 4 characters per
    # 3 bytes; the slack allows for MIME line breaks), and exactly once decoded.
    if len(payload) > 4 * math.ceil(max_bytes / 3) * 1.1 + 64:
        raise too_large(max_bytes)
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError:
        raise ItemError("invalid_url", "the data URI's base64 data is not valid") from None
    raw = _WHITESPACE.sub(b"", raw)
    if b"-" in raw or b"_" in raw:  # the URL-safe alphabet
        raw = raw.translate(bytes.maketrans(b"-_", b"+/"))
    raw += b"=" * (-len(raw) % 4)  # padding is often left off
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ItemError("invalid_url", "the data URI's base64 data is not valid") from None
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data
