"""The OpenAI-compatible API: the real openai package against a real HTTP server, and OpenAI's error shape."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from PIL import Image

from .helpers import (
    SECRET,
    TINY_MODEL,
    as_image,
    assert_envelope,
    assert_openai_error,
    assert_v1_still_serving,
    data_uri,
    image_bytes,
    metric_value,
    reference_image_vectors,
    reference_text_vectors,
)
from .live_server import LiveServer


@pytest.fixture(scope="module")
def server(shared_app):
    """The app behind a real HTTP server on 127.0.0.1, as the openai package needs."""
    with LiveServer(shared_app) as live:
        yield live.url


@pytest.fixture
def openai_client(server, app):
    # ``app`` is the app behind ``server``, made ready for this test.
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=30)


# --- the real openai package --------------------------------------------------------------------

@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_the_openai_package_gets_the_embedders_vectors(openai_client, tiny_embedder, encoding_format):
    # None: the package's default, which asks the server for base64 and decodes it itself.
    texts = ["a photo of a cat", "a dog on a beach", ""]
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    result = openai_client.embeddings.create(model=TINY_MODEL, input=texts, **kwargs)
    assert result.object == "list" and result.model == TINY_MODEL
    assert [d.index for d in result.data] == [0, 1, 2] and all(d.object == "embedding" for d in result.data)
    expected = tiny_embedder.embed_texts(texts)
    if encoding_format == "base64":  # the package hands back the string untouched
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in result.data])
    else:
        got = np.asarray([d.embedding for d in result.data])
    assert got.shape == (3, tiny_embedder.dimensions)
    assert np.abs(got - expected).max() <= 1e-6
    tokens = tiny_embedder.tokenizer(texts)
    real = sum(int(np.flatnonzero(row.numpy()).max()) + 1 for row in tokens)
    assert result.usage.prompt_tokens == result.usage.total_tokens == real


def test_the_openai_package_with_a_single_string_and_dimensions(openai_client, tiny_embedder):
    result = openai_client.embeddings.create(model=TINY_MODEL, input="a cat", dimensions=tiny_embedder.dimensions)
    assert len(result.data) == 1
    assert np.abs(np.asarray(result.data[0].embedding) - tiny_embedder.embed_texts(["a cat"])[0]).max() <= 1e-6


def test_the_openai_package_embeds_data_uri_images_among_texts(openai_client, photos, reference_model):
    inputs = ["a cat", data_uri(photos["chelsea_0.jpg"]), "a cup of coffee", data_uri(photos["camera.png"], "image/png")]
    result = openai_client.embeddings.create(model=TINY_MODEL, input=inputs)
    got = np.asarray([d.embedding for d in result.data])
    texts = reference_text_vectors(reference_model, ["a cat", "a cup of coffee"])
    images = reference_image_vectors(reference_model, [as_image(photos["chelsea_0.jpg"]), as_image(photos["camera.png"])])
    assert np.abs(got[[0, 2]] - texts).max() <= 1e-5
    assert np.abs(got[[1, 3]] - images).max() <= 1e-5
    only_texts = openai_client.embeddings.create(model=TINY_MODEL, input=["a cat", "a cup of coffee"])
    assert result.usage.prompt_tokens == only_texts.usage.prompt_tokens  # images count 0 tokens


def test_the_openai_package_sees_a_failed_image_as_an_error(openai_client, image_server):
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.embeddings.create(model=TINY_MODEL, input=[image_server.url("/chelsea_0.jpg"),
                                                                 image_server.url("/missing.jpg")],
                                        extra_body={"modality": "image"})
    error = raised.value
    assert error.status_code == 400 and error.code == "upstream_status" and error.param == "input[1]"
    assert "input[1]" in error.message and "404" in error.message


def test_the_openai_package_lists_the_model(openai_client, tiny_embedder):
    models = openai_client.models.list().data
    assert [m.id for m in models] == [TINY_MODEL]
    assert models[0].object == "model" and models[0].owned_by and models[0].created > 0
    assert openai_client.models.retrieve(TINY_MODEL).id == TINY_MODEL
    with pytest.raises(openai.NotFoundError) as raised:
        openai_client.models.retrieve("text-embedding-3-small")
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize("kwargs, status, param, code", [
    ({"model": "text-embedding-3-small"}, 404, "model", "model_not_found"),
    ({"dimensions": 16}, 400, "dimensions", "unsupported_dimensions"),
])
def test_the_openai_package_raises_on_a_wrong_model_or_dimensions(openai_client, kwargs, status, param, code):
    arguments = {"model": TINY_MODEL, "input": ["a cat"], **kwargs}
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client.embeddings.create(**arguments)
    assert raised.value.status_code == status and raised.value.param == param and raised.value.code == code


# --- images -------------------------------------------------------------------------------------

def test_modality_image_fetches_urls_and_keeps_the_order(client, image_server, photos, reference_model):
    inputs = [image_server.url("/coffee_0.jpg"), data_uri(photos["chelsea_0.jpg"]), image_server.url("/camera.png")]
    body = client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": inputs, "modality": "image"}).get_json()
    got = np.asarray([d["embedding"] for d in body["data"]])
    expected = reference_image_vectors(reference_model, [as_image(photos[n]) for n in
                                                         ("coffee_0.jpg", "chelsea_0.jpg", "camera.png")])
    assert np.abs(got - expected).max() <= 1e-5
    assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}


def test_without_modality_a_url_is_a_text_and_nothing_is_fetched(client, image_server, tiny_embedder):
    url = image_server.url("/coffee_0.jpg")
    body = client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": [url]}).get_json()
    assert image_server.requests == []
    assert np.abs(np.asarray(body["data"][0]["embedding"]) - tiny_embedder.embed_texts([url])[0]).max() <= 1e-6


def test_modality_text_embeds_a_data_uri_as_text(client, photos, tiny_embedder):
    uri = data_uri(photos["camera.png"], "image/png")[:200]
    body = client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": [uri], "modality": "text"}).get_json()
    assert np.abs(np.asarray(body["data"][0]["embedding"]) - tiny_embedder.embed_texts([uri])[0]).max() <= 1e-6


@pytest.mark.parametrize("item, code", [
    ("data:image/png;base64,!!!!" + SECRET, "invalid_url"),
    ("data:image/png," + SECRET, "invalid_url"),
    ("data:image/png;base64," + base64.b64encode(SECRET.encode()).decode(), "not_an_image"),
    ("data:image/tiff;base64," + base64.b64encode(b"II*\x00" + b"\x00" * 64).decode(), "unsupported_format"),
])
def test_a_failed_image_fails_the_request_naming_its_index_and_code(client, item, code):
    inputs = ["a cat", "a dog", item]
    error = assert_openai_error(client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": inputs}),
                                400, param="input[2]", code=code)
    assert "input[2]" in error["message"] and code in error["message"]
    assert_v1_still_serving(client)


def test_every_failed_image_is_named(client, image_server, photos):
    inputs = [image_server.url("/missing.jpg"), data_uri(photos["chelsea_0.jpg"]), "ftp://example.com/a.jpg"]
    error = assert_openai_error(client.post("/v1/embeddings", json={
        "model": TINY_MODEL, "input": inputs, "modality": "image"}), 400, param="input[0]", code="upstream_status")
    assert "input[0]" in error["message"] and "input[2]" in error["message"] and "invalid_url" in error["message"]
    assert "input[1]" not in error["message"]


def test_image_limits_apply_to_data_uris(tiny_embedder, photos):
    from clip_service import create_app

    app = create_app({"TESTING": True, "fetch_max_bytes": 20_000, "max_image_pixels": 10_000}, embedder=tiny_embedder)
    client = app.test_client()
    big = photos["chelsea_0.jpg"]
    assert len(big) > 20_000
    assert_openai_error(client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": [data_uri(big)]}),
                        400, param="input[0]", code="too_large")
    small = image_bytes(Image.new("RGB", (200, 100), "red"), "PNG")  # 20,000 pixels: over the pixel limit
    assert len(small) < 20_000
    assert_openai_error(client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": [data_uri(small)]}),
                        400, param="input[0]", code="too_large")
    ok = image_bytes(Image.new("RGB", (100, 100), "red"), "PNG")
    assert client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": [data_uri(ok)]}).status_code == 200


# --- errors in OpenAI's shape ------------------------------------------------------------------

GOOD = {"model": TINY_MODEL, "input": ["a cat"]}


@pytest.mark.parametrize("body, param", [
    ({"input": ["a cat"]}, "model"),
    ({"model": TINY_MODEL}, "input"),
    ({**GOOD, "input": []}, "input"),
    ({**GOOD, "input": None}, "input"),
    ({**GOOD, "input": 3}, "input"),
    ({**GOOD, "input": [1, 2, 3]}, "input"),
    ({**GOOD, "input": [[1, 2], [3]]}, "input"),
    ({**GOOD, "input": ["a", 1]}, "input[1]"),
    ({**GOOD, "input": ["a", {"text": SECRET}]}, "input[1]"),
    ({**GOOD, "encoding_format": "int8"}, "encoding_format"),
    ({**GOOD, "dimensions": "32"}, "dimensions"),
    ({**GOOD, "dimensions": 0}, "dimensions"),
    ({**GOOD, "modality": "audio"}, "modality"),
    ({**GOOD, "model": 7}, "model"),
    ({**GOOD, SECRET: 1}, None),
])
def test_invalid_requests_are_400_in_openai_shape(client, body, param):
    error = assert_openai_error(client.post("/v1/embeddings", json=body), 400)
    assert error["param"] == param
    assert_v1_still_serving(client)


def test_token_arrays_are_refused_with_a_hint(client):
    error = assert_openai_error(client.post("/v1/embeddings", json={**GOOD, "input": [[320, 2368]]}), 400)
    assert "check_embedding_ctx_length=False" in error["message"]


@pytest.mark.parametrize("dimensions, status", [(None, 200), (32, 200), (31, 400), (512, 400), (1536, 400)])
def test_dimensions_must_be_the_models_own(client, dimensions, status):
    response = client.post("/v1/embeddings", json={**GOOD, "dimensions": dimensions})
    if status == 200:
        assert response.status_code == 200 and len(response.get_json()["data"][0]["embedding"]) == 32
    else:
        error = assert_openai_error(response, 400, param="dimensions", code="unsupported_dimensions")
        assert "32" in error["message"]
    assert_v1_still_serving(client)


def test_too_many_items_and_too_long_strings_are_400(tiny_embedder):
    from clip_service import create_app

    client = create_app({"TESTING": True, "max_texts": 3, "max_urls": 1, "max_text_chars": 10,
                         "max_url_chars": 30}, embedder=tiny_embedder).test_client()
    for body, param in [({"input": ["a"] * 4}, "input"), ({"input": ["a", "b" * 11]}, "input[1]"),
                        ({"input": ["http://127.0.0.1/" + "a" * 20], "modality": "image"}, "input[0]"),
                        ({"input": ["http://x/a.jpg", "http://x/b.jpg"], "modality": "image"}, "input")]:
        assert_openai_error(client.post("/v1/embeddings", json={"model": TINY_MODEL, **body}), 400, param=param)
    assert client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": ["a" * 10] * 3}).status_code == 200


@pytest.mark.parametrize("data, content_type, status", [
    (b'{"model": "x", "input": [', "application/json", 400),
    (b"", "application/json", 400),
    (b'{"model": "x"}', "text/plain", 415),
    (b'{"model": "x"}', None, 415),
])
def test_bodies_that_are_not_json_are_openai_errors(client, data, content_type, status):
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert_openai_error(client.post("/v1/embeddings", data=data, headers=headers), status)
    assert_v1_still_serving(client)


def test_a_body_over_the_limit_is_413_in_openai_shape(tiny_embedder):
    from clip_service import create_app

    client = create_app({"TESTING": True, "max_body_bytes": 4096}, embedder=tiny_embedder).test_client()
    assert_openai_error(client.post("/v1/embeddings", json={**GOOD, "input": ["a"] * 2000}), 413)
    assert_v1_still_serving(client)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/embeddings", 405), ("DELETE", "/v1/models", 405), ("POST", "/v1/nowhere", 404),
    ("GET", "/v1", 404), ("GET", "/v1/models/" + SECRET, 404),
])
def test_unknown_paths_and_methods_under_v1_are_openai_errors(client, method, path, status):
    response = client.open(path, method=method)
    assert_openai_error(response, status)
    if status == 405:
        assert response.headers["Allow"]
    assert_v1_still_serving(client)


def test_errors_outside_v1_keep_the_service_envelope(client):
    assert_envelope(client.post("/embed/text", json={"texts": []}), 422)


def test_an_unexpected_error_is_a_500_in_openai_shape(app, monkeypatch):
    def broken(texts):
        raise RuntimeError("internals " + SECRET)

    monkeypatch.setattr(app.extensions["clip_embedder"], "embed_tokens", broken)
    error = assert_openai_error(app.test_client().post("/v1/embeddings", json=GOOD), 500)
    assert error["message"] == "internal error"


def test_a_full_queue_is_503_in_openai_shape(app, monkeypatch):
    from clip_service.model.batching import Overloaded

    def busy(texts):
        raise Overloaded()

    monkeypatch.setattr(app.extensions["clip_embedder"], "embed_tokens", busy)
    response = app.test_client().post("/v1/embeddings", json=GOOD)
    assert_openai_error(response, 503, code="overloaded")
    assert response.headers["Retry-After"] == "1"


def test_metrics_count_items_and_failures(client, photos):
    def counts() -> tuple[float, float]:
        text = client.get("/metrics").get_data(as_text=True)
        return (metric_value(text, "clip_items_embedded_total", modality="image"),
                metric_value(text, "clip_item_failures_total"))

    items, failures = counts()
    client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": [data_uri(photos["chelsea_0.jpg"]), "a"]})
    client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": ["data:image/png;base64,AAAA"]})
    assert counts() == (items + 1, failures + 1)


def test_the_document_describes_the_openai_api(client):
    spec = client.get("/openapi.json").get_json()
    assert {"/v1/embeddings", "/v1/models", "/v1/models/{model}"} <= set(spec["paths"])
    operation = spec["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "404", "413", "415", "default"} <= set(operation["responses"])
    assert operation["responses"]["default"] == {"$ref": "#/components/responses/OPENAI_ERROR"}
    request = spec["components"]["schemas"]["EmbeddingRequest"]
    assert {"model", "input", "encoding_format", "embedding_types", "dimensions", "user", "modality"} == \
        set(request["properties"])
    assert request["properties"]["input"]["oneOf"][1]["maxItems"] == 256
