"""Private images on the seed endpoints: data: URIs in urls, and multipart uploads to /embed/image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from clip_service import create_app

from .helpers import (
    SECRET,
    as_image,
    assert_envelope,
    assert_still_serving,
    data_uri,
    image_bytes,
    reference_image_vectors,
)


def upload(client, files, path="/embed/image", **form):
    data = {"images": [(io.BytesIO(content), name) for name, content in files], **form}
    return client.post(path, data=data, content_type="multipart/form-data")


# --- data: URIs in urls ---------------------------------------------------------------------------

def test_data_uris_and_urls_mix_in_order(client, image_server, photos, reference_model):
    urls = [data_uri(photos["chelsea_0.jpg"]), image_server.url("/coffee_0.jpg"),
            data_uri(photos["camera.png"], "image/png"), "data:image/png;base64,AAAA"]
    body = client.post("/embed/image", json={"urls": urls}).get_json()
    assert [len(v) for v in body["embeddings"]] == [32, 32, 32, 0]
    expected = reference_image_vectors(reference_model, [as_image(photos[n]) for n in
                                                         ("chelsea_0.jpg", "coffee_0.jpg", "camera.png")])
    assert np.abs(np.asarray(body["embeddings"][:3]) - expected).max() <= 1e-5
    # The error names the data URI by its header only, never its payload.
    assert body["errors"] == [{"index": 3, "url": "data:image/png;base64,...", "code": "not_an_image",
                               "message": "the data is not a recognised image"}]
    assert image_server.requests == ["/coffee_0.jpg"]


def test_a_data_uri_longer_than_the_url_limit_is_accepted(tiny_embedder, photos):
    client = create_app({"TESTING": True, "max_url_chars": 40}, embedder=tiny_embedder).test_client()
    uri = data_uri(photos["camera.png"], "image/png")
    assert len(uri) > 40
    body = client.post("/embed/mixed", json={"texts": ["a"], "urls": [uri]}).get_json()
    assert [len(v) for v in body["image_embeddings"]] == [32] and body["errors"] == []
    assert client.post("/embed/image", json={"urls": ["http://example.com/" + "a" * 40]}).status_code == 422


@pytest.mark.parametrize("uri, code", [
    ("data:image/png;base64,!!!" + SECRET, "invalid_url"),
    ("data:image/png," + SECRET, "invalid_url"),
    ("data:text/plain;base64,aGVsbG8=", "invalid_url"),
    ("data:;base64,aGVsbG8=", "invalid_url"),
    ("data:image/png;base64," + base64.b64encode(b"<html>" + SECRET.encode()).decode(), "not_an_image"),
    ("data:image/tiff;base64," + base64.b64encode(b"II*\x00" + b"\x00" * 64).decode(), "unsupported_format"),
])
def test_bad_data_uris_are_per_item_errors(client, photos, uri, code):
    body = client.post("/embed/image", json={"urls": [uri, data_uri(photos["chelsea_0.jpg"])]}).get_json()
    assert [len(v) for v in body["embeddings"]] == [0, 32]
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(0, code)]
    assert SECRET not in str(body["errors"])
    assert_still_serving(client)


@pytest.mark.parametrize("variant", ["plain", "no-padding", "line-breaks", "url-safe", "upper-case-scheme"])
def test_common_base64_spellings_are_decoded(client, photos, reference_model, variant):
    data = photos["camera.png"]
    payload = base64.b64encode(data).decode()
    uri = "data:image/png;base64," + {
        "plain": payload, "no-padding": payload.rstrip("="),
        "line-breaks": "\r\n".join(payload[i:i + 76] for i in range(0, len(payload), 76)),
        "url-safe": base64.urlsafe_b64encode(data).decode(), "upper-case-scheme": payload}[variant]
    if variant == "upper-case-scheme":
        uri = "DATA:IMAGE/PNG;BASE64," + payload
    body = client.post("/embed/image", json={"urls": [uri]}).get_json()
    expected = reference_image_vectors(reference_model, [as_image(data)])
    assert np.abs(np.asarray(body["embeddings"]) - expected).max() <= 1e-5


@pytest.fixture(scope="module")
def small_images_client(tiny_embedder):
    app = create_app({"TESTING": True, "fetch_max_bytes": 20_000, "max_image_pixels": 10_000, "max_urls": 3},
                     embedder=tiny_embedder)
    return app.test_client()


def test_the_fetchers_limits_apply_to_data_uris(small_images_client, photos):
    over_pixels = image_bytes(Image.new("RGB", (101, 100), "red"), "PNG")
    animated = [Image.new("RGB", (50, 50), c) for c in ("red", "blue")]
    gif = image_bytes(animated[0], "GIF", save_all=True, append_images=animated[1:])
    urls = [data_uri(photos["chelsea_0.jpg"]), data_uri(over_pixels, "image/png"), data_uri(gif, "image/gif")]
    assert len(photos["chelsea_0.jpg"]) > 20_000
    body = small_images_client.post("/embed/image", json={"urls": urls}).get_json()
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(0, "too_large"), (1, "too_large")]
    assert len(body["embeddings"][2]) == 32
    # The decoded size counts: a payload a few bytes over the limit is refused, one at it accepted.
    at_limit = image_bytes(Image.new("RGB", (64, 64), "red"), "PNG")
    at_limit += b"\x00" * (20_000 - len(at_limit))  # trailing bytes after IEND are ignored by decoders
    over = at_limit + b"\x00"
    body = small_images_client.post("/embed/image", json={"urls": [data_uri(at_limit, "image/png"),
                                                                   data_uri(over, "image/png")]}).get_json()
    assert [len(v) for v in body["embeddings"]] == [32, 0] and body["errors"][0]["code"] == "too_large"


# --- multipart uploads ----------------------------------------------------------------------------

def test_uploads_are_embedded_in_order(client, photos, reference_model):
    names = ["chelsea_0.jpg", "camera.png", "coffee_0.jpg"]
    response = upload(client, [(n, photos[n]) for n in names])
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"embeddings", "errors", "model", "pretrained", "dimensions", "precision"}
    expected = reference_image_vectors(reference_model, [as_image(photos[n]) for n in names])
    assert np.abs(np.asarray(body["embeddings"]) - expected).max() <= 1e-5 and body["errors"] == []


def test_a_failed_upload_is_a_per_item_error(client, photos):
    response = upload(client, [("a.jpg", photos["chelsea_0.jpg"]), (SECRET + ".jpg", b"<html>" + SECRET.encode()),
                               ("empty.png", b"")])
    body = response.get_json()
    assert [len(v) for v in body["embeddings"]] == [32, 0, 0]
    assert [(e["index"], e["url"], e["code"]) for e in body["errors"]] == [
        (1, "upload:1", "not_an_image"), (2, "upload:2", "not_an_image")]
    assert SECRET not in response.get_data(as_text=True)


def test_the_fetchers_limits_apply_to_uploads(small_images_client, photos):
    over_pixels = image_bytes(Image.new("RGB", (101, 100), "red"), "PNG")
    tiff = image_bytes(Image.new("RGB", (10, 10), "red"), "TIFF")
    ok = image_bytes(Image.new("RGB", (100, 100), "red"), "PNG")
    body = upload(small_images_client, [("big.jpg", photos["chelsea_0.jpg"]), ("wide.png", over_pixels),
                                        ("t.tiff", tiff)]).get_json()
    assert [e["code"] for e in body["errors"]] == ["too_large", "too_large", "unsupported_format"]
    assert len(upload(small_images_client, [("ok.png", ok)]).get_json()["embeddings"][0]) == 32


@pytest.mark.parametrize("files, form, field", [
    ([], {}, "images"),
    ([], {"urls": "http://example.com/a.jpg"}, "_schema"),
    ([("a.png", b"x")] * 4, {}, "images"),
])
def test_bad_uploads_are_422(small_images_client, files, form, field):
    body = assert_envelope(upload(small_images_client, files, **form), 422)
    assert list(body["errors"]) == [field]
    assert_still_serving(small_images_client)


def test_files_under_another_field_name_are_422(client, photos):
    response = client.post("/embed/image", data={"file": (io.BytesIO(photos["camera.png"]), "c.png")},
                           content_type="multipart/form-data")
    assert "images" in assert_envelope(response, 422)["errors"]["_schema"][0]
    assert_still_serving(client)


def test_an_upload_over_the_body_limit_is_413(tiny_embedder, photos):
    client = create_app({"TESTING": True, "max_body_bytes": 4096}, embedder=tiny_embedder).test_client()
    assert_envelope(upload(client, [("a.jpg", photos["chelsea_0.jpg"])]), 413)
    assert_still_serving(client)


@pytest.mark.parametrize("path", ["/embed/text", "/embed/mixed"])
def test_uploads_are_415_on_the_other_endpoints(client, photos, path):
    assert_envelope(upload(client, [("a.jpg", photos["chelsea_0.jpg"])], path=path), 415)
    assert_still_serving(client)


def test_the_default_body_limit_fits_a_base64_image_of_the_byte_limit(tiny_embedder):
    app = create_app({"TESTING": True}, embedder=tiny_embedder)
    settings = app.config["CLIP"]
    assert app.config["MAX_CONTENT_LENGTH"] == settings.limits.max_body_bytes == 32 * 1024 * 1024
    assert settings.limits.max_body_bytes > 4 * -(-settings.fetch.max_bytes // 3) + 1024


def test_the_document_describes_uploads(client):
    spec = client.get("/openapi.json").get_json()
    content = spec["paths"]["/embed/image"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(content)
    form = spec["components"]["schemas"]["UploadForm"]
    assert form["required"] == ["images"]
    images = form["properties"]["images"]
    assert images["items"] == {"type": "string", "format": "binary"} and images["maxItems"] == 64
