"""Decode untrusted image bytes into an upright RGB PIL image, or say why not, within a memory budget.

No network and no model here: the fetcher hands in bytes, the embedder takes
the image.
"""

from __future__ import annotations

import io
import math
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..process_local import PerProcess
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


# Peak bytes per pixel while a frame of each mode is decoded and turned into RGB:
# the decoded frame plus the copies the conversion makes (alpha: RGBA, a white
# background and the result; 16-bit grey: a float64 copy). Unknown modes: the most.
_PEAK_BYTES_PER_PIXEL = {"1": 4, "L": 4, "P": 4, "RGB": 3, "CMYK": 7, "YCbCr": 6, "LA": 9, "La": 9,
                         "PA": 12, "RGBA": 10, "RGBa": 10, "I;16": 14, "I;16B": 14, "I;16L": 14, "I;16N": 14,
                         "I": 16, "F": 16}
_MOST_BYTES_PER_PIXEL = 16


class DecodeBudget:
    """At most ``limit_bytes`` of images being decoded at once in this process; a decode waits for its share.

    A decode reserves its peak (width x height x the bytes its mode needs) from
    the image's header, before any pixel is decoded, and gives it back once the
    image is preprocessed, so what clients send cannot push a worker past its
    memory: many large images queue here instead of decoding side by side.
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._state = PerProcess(_BudgetState)

    @property
    def in_use(self) -> int:
        return self._state.get().used

    @contextmanager
    def reserve(self, nbytes: int, deadline: float) -> Iterator[None]:
        """Hold ``nbytes`` of the budget while the block runs; ItemError fetch_timeout if none frees up in time."""
        state = self._state.get()
        with state.changed:
            while state.used + nbytes > self.limit_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ItemError("fetch_timeout", "the service was too busy decoding other images to decode "
                                                     "this one in time")
                state.changed.wait(left)
            state.used += nbytes
        try:
            yield
        finally:
            with state.changed:
                state.used -= nbytes
                state.changed.notify_all()


def recycle_decode_memory(limit_bytes: int) -> None:
    """Let Pillow keep up to ``limit_bytes`` of freed image blocks for the next decode (process-wide).

    Without it, each download thread's large decodes go through glibc's
    per-thread arenas, which keep freed memory: 48 decodes of a 49-megapixel
    PNG, never more than 400 MiB at once, still left a peak RSS 3.4 GiB higher.
    Recycled blocks keep the peak near the budget.
    """
    Image.core.set_blocks_max(max(0, limit_bytes // Image.core.get_block_size()))


class _BudgetState:
    def __init__(self):
        self.changed = threading.Condition()
        self.used = 0


def decode_cost(img: Image.Image) -> int:
    """The peak bytes decoding ``img`` (opened, not yet loaded) into RGB takes."""
    width, height = img.size
    if img.format == "WEBP":
        return webp_cost(width, height, alpha=img.mode != "RGB")
    per_pixel = _PEAK_BYTES_PER_PIXEL.get(img.mode, _MOST_BYTES_PER_PIXEL)
    if img.mode == "P" and "transparency" in img.info:
        per_pixel = _PEAK_BYTES_PER_PIXEL["RGBA"] + 1  # the palette image, then RGBA and RGB copies
    if img.format == "GIF":
        per_pixel += 1  # the decoder keeps the previous frame beside the frame (measured)
    return width * height * per_pixel


def webp_cost(width: int, height: int, *, alpha: bool) -> int:
    """Peak bytes of a WebP decode: libwebp's RGBA canvas (made when the file is opened), the frame's
    copy handed to Pillow, and the image and its conversion to RGB."""
    return width * height * (8 + (_PEAK_BYTES_PER_PIXEL["RGBA"] if alpha else 3))


def webp_canvas(data: bytes) -> tuple[int, int, bool] | None:
    """(width, height, has alpha) from a WebP file's first chunk header, or None if it is not one.

    Read here, not by Pillow, because Pillow's WebP decoder allocates the whole
    canvas as soon as the file is opened: the size must be checked first.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the start code
        return (int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF,
                False)
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: width-1, height-1 (14 bits each), then alpha
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one, alpha in the flags
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1,
                bool(data[20] & 0x10))
    return None


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Return the first frame of ``data`` as an EXIF-upright RGB image (no budget: for callers of their own)."""
    with decoded(data, max_pixels=max_pixels, draft_size=draft_size) as image:
        return image


@contextmanager
def decoded(data: bytes, *, max_pixels: int, draft_size: int | None = None, budget: DecodeBudget | None = None,
            deadline: float = math.inf) -> Iterator[Image.Image]:
    """The first frame of ``data`` as an EXIF-upright RGB image, its decoding memory held in ``budget``.

    ``draft_size`` (the model's input side) lets a large JPEG decode at a
    reduced DCT scale, and reduces any other large image right after it is
    decoded, so that each side keeps at least twice that many pixels: the final
    antialiased resize sees about as much detail as from the full image, for a
    fraction of the work, and the full-size frame is released at once.
    """
    webp = webp_canvas(data)
    if webp is not None:  # Pillow allocates a WebP's canvas when it opens the file: reserve before that
        width, height, alpha = webp
        _check_pixels(width, height, max_pixels)
        cost = webp_cost(width, height, alpha=alpha)
    else:
        with _decode_errors(data):
            img = _open(data, max_pixels, draft_size)
        width, height = img.size
        cost = decode_cost(img)
    if budget is not None and cost > budget.limit_bytes:
        raise ItemError("too_large", f"decoding this {width}x{height} image takes about {-(-cost >> 20)} MiB; "
                                     f"the limit is {budget.limit_bytes >> 20} MiB (CLIP_DECODE_BUDGET_MB)")
    with budget.reserve(cost, deadline) if budget is not None else nullcontext():
        with _decode_errors(data):
            if webp is not None:
                img = _open(data, max_pixels, draft_size)
            image = _finish(img, draft_size)
        del img  # a WebP's decoder, and its canvas, go with it
        yield image


def _open(data: bytes, max_pixels: int, draft_size: int | None) -> Image.Image:
    img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    _check_pixels(*img.size, max_pixels)
    if draft_size and img.format == "JPEG":
        # Pillow picks the largest 1/2, 1/4 or 1/8 scale that stays at or above this size.
        img.draft(None, (2 * draft_size, 2 * draft_size))
    return img


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ItemError("decode_failed", "image has no pixels")
    if width * height > max_pixels:
        raise ItemError("too_large", f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")


def _finish(img: Image.Image, draft_size: int | None) -> Image.Image:
    """Load the first frame (animations are never advanced), reduce it, turn it upright, make it RGB."""
    img.load()
    if draft_size and min(img.size) >= 4 * draft_size:
        if img.mode == "P":  # palettes cannot be averaged; their colours can
            img = _depalette(img)
        if img.mode in _REDUCIBLE:
            img = img.reduce(min(img.size) // (2 * draft_size))
    _upright(img)
    return to_rgb(img)


# Modes Image.reduce takes.
_REDUCIBLE = {"L", "LA", "La", "I", "F", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "PA"}


def _upright(img: Image.Image) -> None:
    """Turn ``img`` as its EXIF (or XMP) orientation says, in place."""
    # After the reduction, which keeps the file's metadata: only the small image is turned, and the
    # reduction's edge blocks stay where they were. In place: no copy of an image that needs no turn.
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass


@contextmanager
def _decode_errors(data: bytes) -> Iterator[None]:
    """Turn Pillow's exceptions about ``data`` into the per-item codes of the API."""
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* is still a bomb here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
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


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, alpha, CMYK, grey, 16-bit) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit_grey(img)
    if img.mode == "P":
        img = _depalette(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _depalette(img: Image.Image) -> Image.Image:
    """A palette image as its colours (with alpha where the palette has a transparent entry)."""
    return img.convert("RGBA" if "transparency" in img.info else "RGB")


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
