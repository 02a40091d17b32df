"""Decode untrusted image bytes into an upright RGB PIL image, or say why not.

No network and no model here: the fetcher hands in bytes, the embedder takes
the image.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ItemError

# Pillow's rarer decoders are where its CVEs live; only these are ever run.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# Leading bytes of formats Pillow (or a browser) knows but we refuse, so the
# client hears "unsupported format" rather than "not an image".
_KNOWN_OTHER_SIGNATURES = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"%PDF", "PDF"), (b"icns", "ICNS"), (b"DDS ", "DDS"), (b"qoif", "QOI"),
    (b"\x0a\x05\x01\x08", "PCX"), (b"P6", "PPM"), (b"P5", "PGM"),
)

# Transparent pixels are shown over white, as a browser would show them.
_BACKGROUND = (255, 255, 255)


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Return the first frame of ``data`` as an EXIF-upright RGB image.

    ``draft_size`` (the model's input side) lets a large JPEG decode at a
    reduced DCT scale that still leaves at least twice that many pixels on each
    side, so the final antialiased resize sees about as much detail as from
    the full image, for a fraction of the decoding work.
    """
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* is still a bomb here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ItemError("decode_failed", "image has no pixels")
            if width * height > max_pixels:
                raise ItemError(
                    "too_large", f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
            if draft_size and img.format == "JPEG":
                # Pillow picks the largest 1/2, 1/4 or 1/8 scale that stays at or above this size.
                img.draft(None, (2 * draft_size, 2 * draft_size))
            img.load()  # first frame only: animations are never advanced
    except ItemError:
        raise
    except UnidentifiedImageError:
        fmt = _other_format(data)
        if fmt:
            raise ItemError(
                "unsupported_format",
                f"{fmt} images are not accepted; send {', '.join(ALLOWED_FORMATS)}") from None
        raise ItemError("not_an_image", "the data is not a recognised image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ItemError("too_large", "image exceeds the pixel limit") from None
    except Exception as exc:  # truncated or corrupt files raise OSError, ValueError, SyntaxError...
        raise ItemError("decode_failed", f"image could not be decoded ({type(exc).__name__})") from None
    return to_rgb(_upright(img))


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, alpha, CMYK, grey, 16-bit) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit_grey(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """Scale 16-bit (or wider) greyscale down to 0..255 instead of clipping it."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if values.size and values.max() > 255 else 255.0
    scaled = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _other_format(data: bytes) -> str | None:
    head = data[:16]
    for signature, name in _KNOWN_OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    if data.lstrip()[:5].lower() in (b"<?xml", b"<svg ") and b"<svg" in data[:1024].lower():
        return "SVG"
    return None
