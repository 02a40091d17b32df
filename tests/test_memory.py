"""Bounded memory: a decoded image lives only until it is preprocessed, within a per-worker decode budget."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from clip_service.images.decoding import DecodeBudget, decode_cost, decode_image, decoded, webp_canvas
from clip_service.images.errors import ItemError

from .helpers import FIXTURES, assert_close_to_the_exact_decode, image_bytes
from .support.gunicorn import GunicornProcess
from .support.image_server import ImageServer

MIB = 1 << 20


# --- the budget ----------------------------------------------------------------------------------

def test_reservations_never_exceed_the_budget_and_are_given_back():
    budget = DecodeBudget(100)
    peak, lock = [0], threading.Lock()

    def use(n: int) -> None:
        with budget.reserve(n, time.monotonic() + 10):
            with lock:
                peak[0] = max(peak[0], budget.in_use)
            time.sleep(0.01)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(use, [30, 60, 40, 90, 10, 50, 70, 20] * 3))
    assert 0 < peak[0] <= 100 and budget.in_use == 0


def test_waiting_past_the_deadline_is_a_fetch_timeout():
    budget = DecodeBudget(100)
    with budget.reserve(80, time.monotonic() + 1):
        started = time.monotonic()
        with pytest.raises(ItemError) as waited:
            with budget.reserve(30, time.monotonic() + 0.2):
                pass
        assert waited.value.code == "fetch_timeout" and 0.15 < time.monotonic() - started < 2
    with budget.reserve(100, time.monotonic() + 1):  # given back: the whole budget is free again
        pass


def test_the_budget_is_held_while_the_image_is_used_and_given_back_after():
    budget = DecodeBudget(10 * MIB)
    data = image_bytes(Image.new("RGB", (1000, 800), "red"), "PNG")
    with decoded(data, max_pixels=10**8, budget=budget, deadline=time.monotonic() + 5) as image:
        assert image.size == (1000, 800) and budget.in_use == 1000 * 800 * 3
    assert budget.in_use == 0


def test_an_image_that_could_never_fit_is_too_large_at_once():
    budget = DecodeBudget(1 * MIB)
    data = image_bytes(Image.new("RGBA", (1000, 1000), (1, 2, 3, 4)), "PNG")
    with pytest.raises(ItemError) as refused:
        with decoded(data, max_pixels=10**8, budget=budget, deadline=time.monotonic() + 5):
            pass
    assert refused.value.code == "too_large" and "CLIP_DECODE_BUDGET_MB" in refused.value.message


@pytest.mark.parametrize("mode, per_pixel", [("RGB", 3), ("L", 4), ("P", 4), ("RGBA", 10), ("I;16", 14)])
def test_the_cost_covers_the_conversions_of_each_mode(mode, per_pixel):
    fmt = "PNG"
    data = image_bytes(Image.new(mode, (50, 40)), fmt)
    assert decode_cost(Image.open(io.BytesIO(data))) == 50 * 40 * per_pixel


@pytest.mark.parametrize("mode, options, alpha", [
    ("RGB", {"quality": 80}, False),                    # lossy: a VP8 chunk
    ("RGB", {"lossless": True}, False),                 # lossless: VP8L
    ("RGBA", {"lossless": True}, True),                 # lossless with alpha
    ("RGBA", {"quality": 80}, True),                    # lossy with alpha: VP8X + ALPH
    ("RGB", {"quality": 80, "exif": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"}, False),  # VP8X
])
def test_a_webps_canvas_is_read_from_its_header_as_pillow_reads_it(mode, options, alpha):
    data = image_bytes(Image.new(mode, (301, 157), (1, 2, 3, 4)[:len(mode)]), "WEBP", **options)
    width, height, has_alpha = webp_canvas(data)
    assert (width, height) == Image.open(io.BytesIO(data)).size == (301, 157) and has_alpha == alpha


def test_a_webp_over_the_budget_is_refused_before_pillow_opens_it(monkeypatch):
    data = image_bytes(Image.new("RGB", (1000, 1000), "red"), "WEBP", lossless=True)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow opened it"))
    with pytest.raises(ItemError) as refused:
        with decoded(data, max_pixels=10**8, budget=DecodeBudget(10 * MIB), deadline=time.monotonic() + 5):
            pass
    assert refused.value.code == "too_large" and "11 MiB" in refused.value.message
    with pytest.raises(ItemError) as pixels:
        with decoded(data, max_pixels=999_999, budget=DecodeBudget(100 * MIB)):
            pass
    assert pixels.value.code == "too_large"


# --- reduced decoding of formats without a JPEG draft ---------------------------------------------

def _big_png(orientation: int | None = None) -> bytes:
    photo = Image.open(FIXTURES / "large" / "chelsea_12mp.jpg")
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    return image_bytes(photo, "PNG", exif=exif.tobytes()) if orientation else image_bytes(photo, "PNG")


def test_a_large_png_is_reduced_and_stays_upright():
    exact = decode_image(_big_png(), max_pixels=10**8)
    reduced = decode_image(_big_png(), max_pixels=10**8, draft_size=224)
    assert exact.size == (4000, 3000) and reduced.size == (667, 500)  # by 3000 // 448 = 6 (rounded up): each side >= 448
    rotated = decode_image(_big_png(orientation=6), max_pixels=10**8, draft_size=224)
    assert rotated.size == (500, 667)
    small = image_bytes(Image.new("RGB", (800, 600), "blue"), "PNG")  # under 4x the input: decoded as it is
    assert decode_image(small, max_pixels=10**8, draft_size=224).size == (800, 600)


@pytest.mark.e2e
def test_a_reduced_png_gives_the_exact_pipelines_vector(vit_b32_checkpoint):
    data = _big_png()
    assert_close_to_the_exact_decode(vit_b32_checkpoint, decode_image(data, max_pixels=10**8),
                                     decode_image(data, max_pixels=10**8, draft_size=224))


# --- the real thing: a real Gunicorn, hostile requests, the worker's peak RSS -----------------------

BUDGET_MIB = 400  # CLIP_DECODE_BUDGET_MB's default
SLOTS = 16  # CLIP_FETCH_WORKER_CONCURRENCY's default: downloads, and downloaded bytes waiting to decode
# What a worker may hold beyond its idle RSS and the decode budget, besides the download buffers
# (SLOTS x twice the file, while its chunks are joined): preprocessed tensors, the fetch
# threads' stacks, the answers, the allocator's slack.
MARGIN_MIB = 150
SIDE = 7000  # 49 megapixels, under the 50-megapixel limit


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def hostile_images():
    """A 49-megapixel solid-colour PNG, WebP and GIF: small downloads, large decodes."""
    image = Image.new("RGB", (SIDE, SIDE), (200, 30, 30))
    files = {"png": image_bytes(image, "PNG"), "webp": image_bytes(image, "WEBP", lossless=True),
             "gif": image_bytes(image.convert("P"), "GIF")}
    del image
    with ImageServer() as server:
        for fmt, data in files.items():
            server.add(f"/big.{fmt}", data, f"image/{fmt}")
        server.sizes = {fmt: len(data) for fmt, data in files.items()}
        yield server


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_hostile_requests_stay_within_the_decode_budget(tiny_model_dir, hostile_images, tmp_path):
    server = GunicornProcess({
        "CLIP_MODEL": f"local-dir:{tiny_model_dir}",
        "CLIP_PRETRAINED": str(tiny_model_dir / "open_clip_pytorch_model.bin"),
        "CLIP_FETCH_ALLOW": f"127.0.0.1:{hostile_images.port}",
        "CLIP_FETCH_REQUEST_TIMEOUT": "12",  # each round ends by then; the rest are fetch_timeout
        "CLIP_CACHE_MB": "0",
    }, tmp_path / "gunicorn.log")
    try:
        server.wait_healthy()
        assert requests.post(server.base + "/embed/text", json={"texts": ["warm"]}, timeout=30).status_code == 200
        worker = int(Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()[0])
        idle_mib = _status_kib(worker, "VmRSS") / 1024
        for fmt in ("png", "webp", "gif"):
            bound = idle_mib + BUDGET_MIB + SLOTS * 2 * hostile_images.sizes[fmt] / MIB + MARGIN_MIB
            urls = [hostile_images.url(f"/big.{fmt}?copy={n}") for n in range(64)]

            def hostile(offset: int) -> requests.Response:
                return requests.post(server.base + "/embed/image", json={"urls": urls[offset:] + urls[:offset]},
                                     timeout=60)

            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(hostile, range(4)))
            embedded, codes = 0, set()
            for answer in answers:
                assert answer.status_code == 200, answer.text[:300]
                body = answer.json()
                codes |= {e["code"] for e in body["errors"]}
                embedded += sum(1 for v in body["embeddings"] if v)
                assert len(body["embeddings"]) == 64
            if fmt == "webp":
                # A 49-megapixel WebP needs about 539 MiB to decode (libwebp's canvas, the frame's copy,
                # the image): more than the whole budget, so it is refused at its header.
                assert codes == {"too_large"} and embedded == 0
            else:
                assert codes <= {"fetch_timeout"}, codes  # waited too long: the budget queues decodes
                assert embedded > 0, fmt
            peak_mib = _status_kib(worker, "VmHWM") / 1024
            assert peak_mib <= bound, f"{fmt}: peak {peak_mib:.0f} MiB > {bound:.0f} (idle {idle_mib:.0f})"
        ok = requests.post(server.base + "/embed/text", json={"texts": ["still up"]}, timeout=30)
        assert ok.status_code == 200 and server.proc.poll() is None
    finally:
        server.stop()
