"""Every common image mode becomes upright 8-bit RGB; broken bytes get a per-item code."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from clip_service.images.decoding import DecodeBudget, decode_image, decoded
from clip_service.images.errors import ItemError

from .helpers import image_bytes

MAX_PIXELS = 10_000_000


def _decode(data: bytes) -> Image.Image:
    img = decode_image(data, max_pixels=MAX_PIXELS)
    assert img.mode == "RGB"
    return img


def test_palette_png():
    img = Image.new("P", (8, 8))
    img.putpalette([255, 0, 0] * 256)
    assert _decode(image_bytes(img, "PNG")).getpixel((0, 0)) == (255, 0, 0)


def test_transparent_pixels_are_shown_over_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((1, 1), (0, 0, 255, 255))
    out = _decode(image_bytes(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 255)


def test_palette_with_transparency_and_grey_with_alpha():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.info["transparency"] = 0
    assert _decode(image_bytes(pal, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (50, 255))
    assert _decode(image_bytes(la, "PNG")).getpixel((0, 0)) == (50, 50, 50)


def test_cmyk_jpeg():
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    r, g, b = _decode(image_bytes(img, "JPEG")).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_greyscale_png_photo(photos):
    out = _decode(photos["camera.png"])
    r, g, b = out.getpixel((100, 100))
    assert r == g == b


def test_16_bit_greyscale_is_scaled_not_clipped():
    values = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey at 16 bits
    img = Image.fromarray(values)
    out = _decode(image_bytes(img, "PNG"))
    assert abs(out.getpixel((0, 0))[0] - 128) <= 1


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 10))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = _decode(image_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (10, 20)
    top = out.getpixel((5, 2))
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


# What each EXIF orientation asks a viewer to do with the stored pixels (rows, columns), written
# with numpy so that the test does not share the code under test's table.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                          # mirrored left-right
    3: lambda a: a[::-1, ::-1],                       # turned 180
    4: lambda a: a[::-1, :],                          # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),                # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),                     # turned 90 clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],    # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),                      # turned 90 anticlockwise
}


def _encoded(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    """``img`` as ``fmt`` (JPEG at quality 90, WebP lossless), with an EXIF orientation tag if given."""
    options = {"JPEG": {"quality": 90}, "WEBP": {"lossless": True}}.get(fmt, {})
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    return image_bytes(img, fmt, **options)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt, size, draft_size", [
    ("JPEG", (37, 23), None),      # odd sides: a wrong turn cannot hide in a square
    ("PNG", (37, 23), None),
    ("WEBP", (37, 23), None),
    ("JPEG", (2051, 1537), 8),     # the reduced-scale (draft) decode, then a reduction of its result
    ("PNG", (641, 479), 16),       # reduced after decoding, by 15, with partial blocks at two edges
])
def test_each_exif_orientation_gives_the_stored_pixels_turned_upright(fmt, size, draft_size, orientation):
    noise = np.random.default_rng(orientation).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(noise)
    stored = np.asarray(decode_image(_encoded(img, fmt), max_pixels=MAX_PIXELS, draft_size=draft_size))
    # The same compressed pixels with only the tag added: the decode must be exactly them, turned
    # after any reduction (reducing first keeps the reduction's partial blocks where they were).
    out = np.asarray(decode_image(_encoded(img, fmt, orientation), max_pixels=MAX_PIXELS, draft_size=draft_size))
    assert np.array_equal(out, UPRIGHT[orientation](stored))
    if draft_size:
        assert max(stored.shape) < max(size) // 8  # the reduced path ran


def test_an_orientation_given_only_in_xmp_is_honoured():
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 10))
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    assert _decode(image_bytes(img, "JPEG", xmp=xmp, quality=95)).size == (10, 20)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("fmt, exif", [
    ("JPEG", b"Exif\x00\x00not a TIFF header at all"),
    ("PNG", b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"),  # an IFD that claims 65535 entries
])
def test_a_broken_exif_block_leaves_a_good_image_as_it_is(fmt, exif):
    noise = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    out = _decode(image_bytes(Image.fromarray(noise), fmt, exif=exif))
    assert out.size == (20, 10)
    if fmt == "PNG":
        assert np.array_equal(np.asarray(out), noise)


def test_a_turned_image_holds_its_decode_budget_and_gives_it_back():
    budget = DecodeBudget(10 * (1 << 20))
    data = _encoded(Image.new("RGB", (1000, 800), "red"), "PNG", orientation=6)
    with decoded(data, max_pixels=MAX_PIXELS, budget=budget, deadline=time.monotonic() + 5) as image:
        assert image.size == (800, 1000) and budget.in_use == 1000 * 800 * 3
    assert budget.in_use == 0


def test_only_the_first_frame_of_an_animation():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    r, g, b = _decode(buf.getvalue()).getpixel((4, 4))
    assert r > 200 and g < 60


@pytest.mark.parametrize("data, code", [
    (b"<html>not an image</html>", "not_an_image"),
    (b"", "not_an_image"),
    (b"II*\x00" + b"\x00" * 64, "unsupported_format"),
    (b"%PDF-1.7\n" + b"\x00" * 64, "unsupported_format"),
])
def test_bytes_that_are_not_an_accepted_image(data, code):
    with pytest.raises(ItemError) as err:
        decode_image(data, max_pixels=MAX_PIXELS)
    assert err.value.code == code


def test_truncated_jpeg_is_a_decode_failure(photos):
    data = photos["chelsea_0.jpg"]
    with pytest.raises(ItemError) as err:
        decode_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)
    assert err.value.code == "decode_failed"


def test_pixel_limit_is_checked_before_decoding():
    data = image_bytes(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(ItemError) as err:
        decode_image(data, max_pixels=1_000_000)
    assert err.value.code == "too_large"


@pytest.mark.e2e
def test_large_jpeg_draft_decode_matches_the_exact_pipeline(vit_b32_checkpoint):
    """Draft-mode decoding of a 12 MP photo gives (nearly) the exact pipeline's pixels and vector."""
    from .helpers import FIXTURES, assert_close_to_the_exact_decode

    data = (FIXTURES / "large" / "chelsea_12mp.jpg").read_bytes()
    exact = decode_image(data, max_pixels=50_000_000)
    draft = decode_image(data, max_pixels=50_000_000, draft_size=224)
    assert exact.size == (4000, 3000)
    assert min(draft.size) >= 2 * 224 and draft.size == (1000, 750)  # decoded at 1/4 scale
    assert_close_to_the_exact_decode(vit_b32_checkpoint, exact, draft)


def test_small_jpegs_are_decoded_exactly_even_with_draft_enabled(photos):
    data = photos["chelsea_0.jpg"]  # 640x480: less than 2x the model input on the short side
    assert np.array_equal(np.asarray(decode_image(data, max_pixels=MAX_PIXELS, draft_size=224)),
                          np.asarray(decode_image(data, max_pixels=MAX_PIXELS)))
