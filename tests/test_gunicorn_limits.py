"""Under a real Gunicorn: oversized and hostile bodies get their 4xx, and the worker keeps serving."""

from __future__ import annotations

import json
import random
import string

import pytest
import requests

from .helpers import assert_envelope, assert_still_serving
from .support.gunicorn import GunicornProcess

pytestmark = pytest.mark.e2e

BODY_LIMIT = 200_000


@pytest.fixture(scope="module")
def server(vit_b32_checkpoint, tmp_path_factory):
    # One worker with one thread: a wedged or crashed worker would fail every later request.
    process = GunicornProcess({
        "CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(vit_b32_checkpoint),
        "CLIP_WORKERS": "1", "CLIP_THREADS": "1", "CLIP_TIMEOUT": "30",
        "CLIP_MAX_BODY_BYTES": str(BODY_LIMIT), "CLIP_MAX_TEXT_CHARS": "100000",
    }, tmp_path_factory.mktemp("gunicorn-limits") / "gunicorn.log")
    try:
        process.wait_healthy()
        yield process
    finally:
        process.stop()


def chunked(total: int, piece: int = 16_384):
    """A JSON body of about ``total`` bytes, streamed without Content-Length."""
    yield b'{"texts": ["'
    sent = 0
    while sent < total:
        yield b"a" * piece
        sent += piece
    yield b'"]}'


@pytest.mark.timeout(180)
@pytest.mark.parametrize("total", [BODY_LIMIT + 1, 5 * BODY_LIMIT])
def test_a_chunked_body_over_the_limit_is_413(server, total):
    try:
        response = requests.post(server.base + "/embed/text", data=chunked(total),
                                 headers={"Content-Type": "application/json"}, timeout=30)
    except requests.ConnectionError:
        pytest.fail("the connection was reset instead of answering 413")
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert f"{BODY_LIMIT} bytes" in assert_envelope(response, 413)["message"]
    assert_still_serving(server.base, dimensions=512)


@pytest.mark.timeout(180)
def test_a_chunked_body_under_the_limit_is_served(server):
    body = json.dumps({"texts": ["a photo of a cat"]}).encode()
    response = requests.post(server.base + "/embed/text", data=iter([body[:10], body[10:]]),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200


@pytest.mark.timeout(180)
@pytest.mark.parametrize("data, content_type, status", [
    (b"x" * (BODY_LIMIT + 1), "application/json", 413),
    (b"[" * 50_000, "application/json", 400),
    (b'{"texts": ["caf\xe9"]}', "application/json", 400),
    (b'{"texts": ["a"]}', "text/plain", 415),
    (b'{"texts": "a cat"}', "application/json", 422),
    (b'{"texts": ["\\ud800"]}', "application/json", 422),  # a lone surrogate is not text
])
def test_hostile_bodies_get_their_4xx(server, data, content_type, status):
    response = requests.post(server.base + "/embed/text", data=data,
                             headers={"Content-Type": content_type}, timeout=30)
    assert_envelope(response, status)
    assert_still_serving(server.base, dimensions=512)


@pytest.mark.timeout(180)
def test_hostile_texts_embed_without_wedging_the_worker(server):
    word = "".join(random.Random(0).choices(string.ascii_lowercase, k=100_000))
    texts = [word, "", "😀" * 500, "a\x00b"]
    response = requests.post(server.base + "/embed/text", data=json.dumps({"texts": texts}),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 200
    assert len(response.json()["embeddings"]) == len(texts)
    assert_still_serving(server.base, dimensions=512)
