"""Every common image mode becomes upright 8-bit RGB; broken bytes get a per-item code."""

import io

import numpy as np
import pytest
from PIL import Image

from clip_service.images.decoding import decode_image
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
