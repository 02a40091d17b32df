"""The HTTP API on a real Flask app with the tiny real model and a local image server."""

import threading

import numpy as np
import pytest

from .helpers import as_image, assert_envelope, assert_still_serving, reference_image_vectors, reference_text_vectors
from .support.image_server import send_body


def _unit(vectors):
    return np.allclose(np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1), 1.0, atol=1e-5)


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "healthy", "model_loaded": True, "precision": "fp32"}


def test_health_is_503_without_a_model(app, monkeypatch):
    monkeypatch.setattr(app.extensions["clip_readiness"], "embedder", None)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unhealthy", "model_loaded": False}  # no model, no precision


def test_embed_text(client, reference_model):
    texts = ["a cat", "a dog on a beach", "a cat"]
    response = client.post("/embed/text", json={"texts": texts})
    assert response.status_code == 200
    body = response.get_json()
    vectors = np.asarray(body["embeddings"])
    assert vectors.shape == (3, 32) and _unit(vectors)
    assert body["dimensions"] == 32 and body["model"] == "clip-service-tiny"
    assert np.abs(vectors - reference_text_vectors(reference_model, texts)).max() <= 1e-5


def test_embed_image_keeps_order_and_marks_failures(client, image_server, reference_model, photos):
    urls = [image_server.url("/chelsea_0.jpg"), image_server.url("/missing.jpg"),
            image_server.url("/coffee_0.jpg"), "ftp://example.com/a.jpg", image_server.url("/camera.png")]
    response = client.post("/embed/image", json={"urls": urls})
    assert response.status_code == 200
    body = response.get_json()
    slots = body["embeddings"]
    assert [len(s) for s in slots] == [32, 0, 32, 0, 32]
    good = [slots[0], slots[2], slots[4]]
    expected = reference_image_vectors(reference_model, [
        as_image(photos[n]) for n in ("chelsea_0.jpg", "coffee_0.jpg", "camera.png")])
    assert np.abs(np.asarray(good) - expected).max() <= 1e-5 and _unit(good)
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, "upstream_status"), (3, "invalid_url")]
    assert body["errors"][0]["url"] == urls[1] and body["errors"][0]["message"]


def test_failed_download_is_logged_as_a_warning(client, image_server, caplog):
    client.post("/embed/image", json={"urls": [image_server.url("/missing.jpg")]})
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "upstream_status" in r.getMessage()]
    assert warnings and "127.0.0.1" in warnings[0].getMessage()


def test_duplicate_urls_are_downloaded_once(client, image_server):
    url = image_server.url("/chelsea_0.jpg")
    body = client.post("/embed/image", json={"urls": [url, url, url]}).get_json()
    assert image_server.requests.count("/chelsea_0.jpg") == 1
    assert body["embeddings"][0] == body["embeddings"][1] == body["embeddings"][2]


def test_images_are_downloaded_concurrently(client, image_server, photos):
    import threading
    import time

    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow(handler):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.3)
        with lock:
            in_flight[0] -= 1
        send_body(handler, photos["chelsea_0.jpg"], "image/jpeg")

    for i in range(4):
        image_server.routes[f"/slow{i}.jpg"] = slow
    started = time.monotonic()
    body = client.post("/embed/image", json={"urls": [image_server.url(f"/slow{i}.jpg") for i in range(4)]}).get_json()
    assert all(len(v) == 32 for v in body["embeddings"])
    assert peak[0] >= 2
    assert time.monotonic() - started < 4 * 0.3 + 1.0


def test_embed_mixed(client, image_server, reference_model):
    body = client.post("/embed/mixed", json={
        "texts": ["a cat"], "urls": [image_server.url("/chelsea_0.jpg"), image_server.url("/nope.png")]}).get_json()
    assert np.abs(np.asarray(body["text_embeddings"]) - reference_text_vectors(reference_model, ["a cat"])).max() <= 1e-5
    assert [len(v) for v in body["image_embeddings"]] == [32, 0]
    assert body["errors"][0]["index"] == 1


def test_embed_mixed_embeds_the_texts_while_the_images_download(app, client, image_server, photos, monkeypatch):
    embedder = app.extensions["clip_embedder"]
    texts_embedded = threading.Event()
    observe = embedder.on_batch

    def on_batch(modality, size, seconds):
        if modality == "text":
            texts_embedded.set()
        if observe is not None:
            observe(modality, size, seconds)

    monkeypatch.setattr(embedder, "on_batch", on_batch)
    texts_done_during_download = []

    def held(handler):
        # Hold the image back until the texts' forward pass has run (at most 5 s).
        texts_done_during_download.append(texts_embedded.wait(5))
        send_body(handler, photos["chelsea_0.jpg"], "image/jpeg")

    image_server.routes["/held.jpg"] = held
    body = client.post("/embed/mixed", json={"texts": ["a cat"], "urls": [image_server.url("/held.jpg")]}).get_json()
    assert texts_done_during_download == [True]
    assert [len(v) for v in body["text_embeddings"] + body["image_embeddings"]] == [32, 32]


@pytest.mark.parametrize("body", [{"texts": ["x"]}, {"texts": ["a"], "urls": []}])
def test_embed_mixed_without_urls(client, body):
    response = client.post("/embed/mixed", json=body)
    assert response.status_code == 200
    assert response.get_json()["image_embeddings"] == []


@pytest.mark.parametrize("path, body", [
    ("/embed/text", {}),
    ("/embed/text", {"texts": []}),
    ("/embed/text", {"texts": "a cat"}),
    ("/embed/text", {"texts": [1, 2]}),
    ("/embed/text", {"texts": [None]}),
    ("/embed/image", {"urls": "http://x/y.jpg"}),
    ("/embed/image", {"urls": []}),
    ("/embed/mixed", {"texts": [], "urls": []}),
])
def test_invalid_bodies_get_a_4xx_envelope(client, path, body):
    response = client.post(path, json=body)
    assert 400 <= response.status_code < 500
    assert assert_envelope(response, response.status_code)["errors"]
    assert_still_serving(client)


def test_limits_come_from_settings(tiny_embedder):
    from clip_service import create_app

    app = create_app({"TESTING": True, "max_texts": 2, "max_text_chars": 5}, embedder=tiny_embedder)
    client = app.test_client()
    assert client.post("/embed/text", json={"texts": ["a", "b", "c"]}).status_code == 422
    assert client.post("/embed/text", json={"texts": ["abcdef"]}).status_code == 422
    assert client.post("/embed/text", json={"texts": ["abc", "de"]}).status_code == 200


@pytest.mark.parametrize("method, path, status", [("GET", "/nowhere", 404), ("GET", "/embed/text", 405),
                                                   ("DELETE", "/health", 405)])
def test_unknown_paths_and_methods_use_the_envelope(client, method, path, status):
    assert_envelope(client.open(path, method=method), status)


def test_openapi_document_lists_every_endpoint(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"/embed/text", "/embed/image", "/embed/mixed", "/health"} <= set(paths)
