"""Weaviate's multi2vec-clip inference API: the Go client's fields, all-or-nothing images, errors as {"error"}."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.serving import make_server

from clip_service import create_app
from clip_service.model.embedder import ClipEmbedder
from clip_service.ops.readiness import Readiness
from clip_service.web.weaviate import views as weaviate

from .helpers import TINY_MODEL, image_bytes

SECRET = "confidential-5d2a"

# The contract, as Weaviate declares it in modules/multi2vec-clip/clients/vectorizer.go
# (weaviate/weaviate; omitempty since 1.26, before it absent lists were sent as null):
#
#     type vecRequest struct {
#         Texts  []string `json:"texts,omitempty"`
#         Images []string `json:"images,omitempty"`
#     }
#
#     type vecResponse struct {
#         TextVectors  [][]float32 `json:"textVectors"`
#         ImageVectors [][]float32 `json:"imageVectors"`
#         Error        string      `json:"error"`
#     }
#
# The client unmarshals the body into vecResponse before it looks at the status,
# then fails on a status above 399 with "fail with status %d: <Error>".
REQUEST_FIELDS = {"texts", "images"}
SUCCESS_FIELDS = {"textVectors", "imageVectors"}
ERROR_FIELDS = {"error"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def weaviate_app(tiny_embedder, **settings_):
    return create_app({"TESTING": True, "weaviate": True, "jpeg_draft": False, **settings_}, embedder=tiny_embedder)


@pytest.fixture(scope="module")
def shared_app(tiny_embedder, _image_server_process):
    # As conftest's shared_app (the image server is reachable, no JPEG draft decoding), with the routes on;
    # conftest's app hands it to each test with its caches emptied.
    server = _image_server_process
    return weaviate_app(tiny_embedder, fetch_allow=f"{server.host}:{server.port}")


def assert_vectors(vectors, count: int, dimensions: int = 32) -> np.ndarray:
    """Go's [][]float32: a list of ``count`` lists of ``dimensions`` JSON numbers, each of length 1."""
    assert isinstance(vectors, list) and len(vectors) == count
    for vector in vectors:
        assert isinstance(vector, list) and len(vector) == dimensions
        assert all(isinstance(x, float) for x in vector)
    array = np.asarray(vectors, dtype=np.float64).reshape(count, dimensions)
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    return array


def assert_answer(response, texts: int, images: int) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == SUCCESS_FIELDS  # no "error", no echo of the inputs: as the reference container answers
    assert_vectors(body["textVectors"], texts)
    assert_vectors(body["imageVectors"], images)
    return body


def assert_error(response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data())  # Weaviate parses the body whatever the status
    assert set(body) == ERROR_FIELDS and isinstance(body["error"], str) and body["error"]
    for needle in needles:
        assert needle in body["error"], body["error"]
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and SECRET not in text
    return body["error"]


def assert_still_serving(client) -> None:
    assert_answer(client.post("/vectorize", json={"texts": ["still fine"]}), 1, 0)


# --- the contract -------------------------------------------------------------------------------

def test_both_texts_and_images_answer_the_go_structs_fields(client, photos):
    body = {"texts": ["a cat", "a dog"], "images": [b64(photos["chelsea_0.jpg"]), b64(photos["camera.png"])]}
    assert set(body) == REQUEST_FIELDS
    assert_answer(client.post("/vectorize", json=body), 2, 2)


def test_the_vectors_are_those_of_embed_text_and_embed_image(client, photos, image_server):
    texts = ["a photo of a cat", "", "coffee " * 50]  # "" and a text past 77 tokens, too
    names = ["chelsea_0.jpg", "camera.png", "coffee_0.jpg"]
    body = assert_answer(client.post("/vectorize", json={"texts": texts, "images": [b64(photos[n]) for n in names]}),
                         3, 3)
    expected_texts = client.post("/embed/text", json={"texts": texts}).get_json()["embeddings"]
    expected_images = client.post("/embed/image", json={"urls": [image_server.url(f"/{n}") for n in names]}).get_json()
    assert expected_images["errors"] == []
    np.testing.assert_allclose(body["textVectors"], expected_texts, atol=1e-6)
    np.testing.assert_allclose(body["imageVectors"], expected_images["embeddings"], atol=1e-6)
    # In order: each vector is its own input's, not a neighbour's.
    assert not np.allclose(body["imageVectors"][0], body["imageVectors"][1], atol=1e-3)


@pytest.mark.parametrize("body, texts, images", [
    ({"texts": ["a cat", "a dog"]}, 2, 0),  # Weaviate 1.26+ leaves out an empty list
    ({"images": ["<chelsea>"]}, 0, 1),  # nearImage sends only images
    ({"texts": ["a cat"], "images": None}, 1, 0),  # Weaviate before 1.26 sent null
    ({"texts": None, "images": ["<chelsea>"]}, 0, 1),
    ({"texts": [], "images": ["<chelsea>"]}, 0, 1),
    ({"texts": ["a cat"], "images": ["<chelsea>"], "future": [1]}, 1, 1),  # unknown fields are ignored
])
def test_either_list_may_be_absent_null_or_empty(client, photos, body, texts, images):
    body = {k: [b64(photos["chelsea_0.jpg"])] if v == ["<chelsea>"] else v for k, v in body.items()}
    assert_answer(client.post("/vectorize", json=body), texts, images)


@pytest.mark.parametrize("body", [{}, {"texts": [], "images": []}, {"texts": None, "images": None}])
def test_neither_answers_empty_lists_as_the_reference_does(client, body):
    # Weaviate never sends this (it calls only with a text or an image); the reference
    # container answers 200 with two empty lists, and so does this service.
    response = client.post("/vectorize", json=body)
    assert response.status_code == 200 and response.get_json() == {"textVectors": [], "imageVectors": []}


def test_a_body_without_content_type_is_json_as_weaviate_before_1_26_sends_it(client):
    response = client.post("/vectorize", data=b'{"texts":["test"],"images":null}')
    assert "Content-Type" not in response.request.headers
    assert_answer(response, 1, 0)


@pytest.fixture(scope="module")
def server(shared_app):
    """The app behind a real HTTP server on 127.0.0.1."""
    http_server = make_server("127.0.0.1", 0, shared_app, threaded=True)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    yield http_server.server_port
    http_server.shutdown()
    thread.join(5)


def test_over_real_http_the_bytes_go_sends(server, photos):
    # What Go's net/http puts on the wire for Vectorize: a POST with a Content-Length, and
    # since 1.26 Content-Type: application/json (before it, none).
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    try:
        for headers in ({"Content-Type": "application/json"}, {}):
            payload = json.dumps({"texts": ["hello"], "images": [b64(photos["camera.png"])]}).encode()
            conn.request("POST", "/vectorize", body=payload, headers=headers)
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Content-Type") == "application/json"
            body = json.loads(response.read())
            assert set(body) == SUCCESS_FIELDS
            assert_vectors(body["textVectors"], 1)
            assert_vectors(body["imageVectors"], 1)
        conn.request("GET", "/.well-known/ready")
        response = conn.getresponse()
        assert response.status == 204 and response.read() == b""
    finally:
        conn.close()


# --- images: all or nothing, the failure named ----------------------------------------------------

TIFF = b"II*\x00" + b"\x00" * 64


@pytest.mark.parametrize("image, code", [
    ("!!!!" + SECRET, "invalid_url"),  # not base64
    ("data:image/png;base64," + b64(b"\x89PNG"), "invalid_url"),  # a data URI is not plain base64
    (b64(SECRET.encode()), "not_an_image"),
    (b64(TIFF), "unsupported_format"),
    ("", "not_an_image"),
])
def test_one_bad_image_fails_the_request_naming_its_index_and_code(client, photos, image, code, monkeypatch):
    embedded = []
    embedder = client.application.extensions["clip_embedder"]
    monkeypatch.setattr(embedder, "embed_pixels", lambda pixels: embedded.append(len(pixels)))
    good = b64(photos["chelsea_0.jpg"])
    message = assert_error(client.post("/vectorize", json={"texts": ["a cat"], "images": [good, image, good]}),
                           400, "images[1]", f"({code})")
    assert "images[0]" not in message and "images[2]" not in message
    assert embedded == []  # no image went through the model: Weaviate could not use a partial answer
    monkeypatch.undo()
    assert_still_serving(client)


def test_invalid_base64_says_so_in_weaviates_terms(client):
    message = assert_error(client.post("/vectorize", json={"images": ["@@@@"]}), 400, "images[0]")
    assert "not valid base64" in message and "data URI" not in message


def test_a_truncated_image_is_decode_failed(client, photos):
    assert_error(client.post("/vectorize", json={"images": [b64(photos["chelsea_0.jpg"][:3000])]}),
                 400, "images[0]", "(decode_failed)")
    assert_still_serving(client)


def test_every_failed_image_is_named(client, photos):
    images = ["%%", b64(photos["camera.png"]), b64(b"text"), b64(TIFF)]
    message = assert_error(client.post("/vectorize", json={"images": images}), 400,
                           "images[0]", "images[2]", "images[3]", "(not_an_image)", "(unsupported_format)")
    assert "images[1]" not in message


def test_the_image_limits_apply_in_bytes_and_pixels(tiny_embedder, photos):
    client = weaviate_app(tiny_embedder, fetch_max_bytes=20_000, max_image_pixels=10_000).test_client()
    big = photos["chelsea_0.jpg"]
    assert len(big) > 20_000
    assert_error(client.post("/vectorize", json={"images": [b64(big)]}), 400,
                 "images[0]", "(too_large)", "20000 bytes")
    wide = image_bytes(Image.new("RGB", (200, 100), "red"), "PNG")  # 20,000 pixels: over the pixel limit
    assert len(wide) < 20_000
    assert_error(client.post("/vectorize", json={"images": [b64(wide)]}), 400, "images[0]", "(too_large)", "pixels")
    ok = image_bytes(Image.new("RGB", (100, 100), "red"), "PNG")
    assert_answer(client.post("/vectorize", json={"images": [b64(ok)]}), 0, 1)


def test_an_image_in_any_accepted_format_works_whatever_the_header_says(client):
    # Each image goes in as data:image/png;base64,...: the decoder sniffs the bytes.
    img = Image.new("RGB", (40, 30), (30, 120, 200))
    images = [b64(image_bytes(img, fmt)) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP")]
    assert_answer(client.post("/vectorize", json={"images": images}), 0, 5)


# --- limits and invalid requests ------------------------------------------------------------------

def test_too_many_items_and_too_long_texts_are_json_errors(tiny_embedder, photos):
    client = weaviate_app(tiny_embedder, max_texts=3, max_urls=2, max_text_chars=10).test_client()
    image = b64(image_bytes(Image.new("RGB", (8, 8), "red"), "PNG"))
    assert_error(client.post("/vectorize", json={"texts": ["a"] * 4}), 422, "texts", "At most 3")
    assert_error(client.post("/vectorize", json={"images": [image] * 3}), 422, "images", "At most 2")
    assert_error(client.post("/vectorize", json={"texts": ["a", "b" * 11]}), 422, "texts[1]", "10 characters")
    assert_answer(client.post("/vectorize", json={"texts": ["a" * 10] * 3, "images": [image] * 2}), 3, 2)


def test_a_body_over_the_limit_is_413_json(tiny_embedder):
    client = weaviate_app(tiny_embedder, max_body_bytes=4096).test_client()
    assert_error(client.post("/vectorize", json={"texts": ["a"] * 2000}), 413, "4096 bytes")
    assert_still_serving(client)


@pytest.mark.parametrize("body, field", [
    ({"texts": "a cat"}, "texts"),
    ({"texts": ["a", 1]}, "texts[1]"),
    ({"images": [None]}, "images[0]"),
    ({"images": [{"data": SECRET}]}, "images[0]"),
    ([], "body"),
    ("a cat", "body"),
])
def test_invalid_requests_are_422_naming_the_field(client, body, field):
    assert_error(client.post("/vectorize", json=body), 422, field + ":")
    assert_still_serving(client)


@pytest.mark.parametrize("data, content_type, status", [
    (b'{"texts": [', "application/json", 400),
    (b"", None, 400),
    (b'{"texts": ["a"]}', "text/plain", 415),
    (b'{"texts": ["a"]}', "application/json; charset=latin-1", 415),
])
def test_bodies_that_are_not_json_are_json_errors(client, data, content_type, status):
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert_error(client.post("/vectorize", data=data, headers=headers), status)
    assert_still_serving(client)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/vectorize", 405), ("POST", "/meta", 405), ("DELETE", "/.well-known/ready", 405),
    ("GET", "/vectorize/" + SECRET, 404),
])
def test_wrong_methods_and_paths_are_json_errors(client, method, path, status):
    response = client.open(path, method=method)
    assert_error(response, status)
    if status == 405:
        assert response.headers["Allow"]


def test_an_unexpected_error_is_a_500_json_error(app, monkeypatch):
    def broken(tokens):
        raise RuntimeError("internals " + SECRET)

    monkeypatch.setattr(app.extensions["clip_embedder"], "embed_tokens", broken)
    assert assert_error(app.test_client().post("/vectorize", json={"texts": ["a"]}), 500) == "internal error"


def test_a_full_queue_is_503_with_retry_after(app, monkeypatch):
    from clip_service.model.batching import Overloaded

    def busy(tokens):
        raise Overloaded()

    monkeypatch.setattr(app.extensions["clip_embedder"], "embed_tokens", busy)
    response = app.test_client().post("/vectorize", json={"texts": ["a"]})
    assert_error(response, 503)
    assert response.headers["Retry-After"] == "1"


def test_the_services_own_routes_keep_their_envelope(client):
    body = client.post("/embed/text", json={"texts": []}).get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert set(client.get("/nowhere").get_json()) == {"code", "status", "message", "errors"}


# --- meta and probes ------------------------------------------------------------------------------

def test_meta_describes_the_model(client, tiny_checkpoint):
    response = client.get("/meta")
    assert response.status_code == 200
    assert response.get_json() == {"model_name": TINY_MODEL, "pretrained": tiny_checkpoint.name, "dimensions": 32,
                                   "precision": "fp32", "scores": "softmax"}


@pytest.mark.parametrize("path", ["/.well-known/live", "/.well-known/ready"])
def test_the_probes_answer_204_without_a_body(client, path):
    response = client.get(path)
    assert response.status_code == 204 and response.get_data() == b""


def test_ready_is_cheap_and_runs_no_inference(app, monkeypatch):
    # Weaviate polls it every second with a 500 ms timeout while it starts.
    def no_inference(*args, **kwargs):
        raise AssertionError("the ready probe ran an inference")

    for name in ("probe", "embed_tokens", "embed_pixels"):
        monkeypatch.setattr(app.extensions["clip_embedder"], name, no_inference)
    assert app.test_client().get("/.well-known/ready").status_code == 204


def test_ready_fails_when_the_worker_is_not_healthy(tiny_checkpoint, monkeypatch):
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")  # broken on purpose: not shared
    app = weaviate_app(embedder)
    # The probe on a clock the test moves: the cached failure expires without waiting it out.
    now = [100.0]
    readiness = app.extensions["clip_readiness"] = Readiness(embedder, ttl=5, timeout=1, clock=lambda: now[0])
    client = app.test_client()
    monkeypatch.setattr(embedder, "probe", lambda timeout: False)
    assert not readiness.warm_up()  # the warm-up's inference failed
    assert_error(client.get("/.well-known/ready"), 503, "not ready")
    assert client.get("/.well-known/live").status_code == 204  # alive, only not ready
    monkeypatch.undo()
    now[0] += 6
    assert readiness()  # the next readiness inference succeeds
    assert client.get("/.well-known/ready").status_code == 204


def test_the_probes_log_no_summary_line_but_vectorize_does(client, caplog):
    # Weaviate polls ready every second while it starts: those lines would be noise.
    caplog.set_level(logging.INFO, logger="clip_service.request")
    client.get("/.well-known/ready")
    client.get("/.well-known/live")
    client.post("/vectorize", json={"texts": ["a"]})
    lines = [r for r in caplog.records if r.name == "clip_service.request"]
    assert [r.endpoint for r in lines] == ["/vectorize"] and lines[0].items == {"text": 1}


# --- off by default, API keys, the document --------------------------------------------------------

def test_the_routes_are_absent_when_disabled(client_without_weaviate):
    client = client_without_weaviate
    for method, path in [("POST", "/vectorize"), ("GET", "/meta"), ("GET", "/.well-known/live"),
                         ("GET", "/.well-known/ready")]:
        response = client.open(path, method=method, json={"texts": ["a"]} if method == "POST" else None)
        assert response.status_code == 404
        assert set(response.get_json()) == {"code", "status", "message", "errors"}  # the service's own 404
    spec = client.get("/openapi.json").get_json()
    assert not set(spec["paths"]) & set(weaviate.PATHS)
    assert "WEAVIATE_ERROR" not in spec["components"].get("responses", {})


@pytest.fixture(scope="module")
def client_without_weaviate(tiny_embedder):
    return create_app({"TESTING": True}, embedder=tiny_embedder).test_client()


@pytest.mark.parametrize("public", [False, True])
def test_with_api_keys_the_probes_stay_open_and_the_api_opens_only_when_public(tiny_embedder, public):
    key = "k" * 24
    client = weaviate_app(tiny_embedder, weaviate_public=public, api_keys=key).test_client()
    assert client.get("/.well-known/live").status_code == 204
    assert client.get("/.well-known/ready").status_code in (204, 503)  # never 401
    for method, path, body in [("POST", "/vectorize", {"texts": ["a cat"]}), ("GET", "/meta", None)]:
        response = client.open(path, method=method, json=body)
        if public:
            assert response.status_code == 200, (path, response.get_data(as_text=True))
        else:
            assert response.status_code == 401 and set(response.get_json()) == ERROR_FIELDS, path
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            keyed = client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {key}"})
            assert keyed.status_code == 200, path
    # The service's own routes keep needing the key either way.
    assert client.post("/embed/text", json={"texts": ["a cat"]}).status_code == 401


def test_the_document_covers_the_routes_in_weaviates_shape(client):
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    assert set(paths["/vectorize"]) == {"post"} and set(paths["/meta"]) == {"get"}
    assert set(paths["/.well-known/live"]) == {"get"} and set(paths["/.well-known/ready"]) == {"get"}
    schemas = spec["components"]["schemas"]
    request_schema = schemas["VectorizeRequest"]
    assert set(request_schema["properties"]) == REQUEST_FIELDS and not request_schema.get("required")
    for name, limit in (("texts", 256), ("images", 64)):
        prop = request_schema["properties"][name]
        assert prop["type"] == "array" and prop["items"]["type"] == "string" and prop["nullable"] is True
        assert prop["maxItems"] == limit
    assert request_schema["properties"]["texts"]["items"]["maxLength"] == 10_000
    answer = schemas["VectorizeResponse"]
    assert set(answer["properties"]) == SUCCESS_FIELDS == set(answer["required"])
    assert answer["properties"]["textVectors"]["items"]["items"]["type"] == "number"
    assert set(schemas["WeaviateError"]["properties"]) == ERROR_FIELDS
    vectorize = paths["/vectorize"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503", "default"} <= set(vectorize)
    for path, method in [("/vectorize", "post"), ("/meta", "get"), ("/.well-known/live", "get"),
                         ("/.well-known/ready", "get")]:
        responses = paths[path][method]["responses"]
        assert responses["default"] == {"$ref": "#/components/responses/WEAVIATE_ERROR"}
        for status, response in responses.items():
            if status not in ("200", "204", "default"):
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/"
                                                                                     "WeaviateError"}
    assert "204" in paths["/.well-known/ready"]["get"]["responses"]
    assert set(schemas["Meta"]["properties"]) == {"model_name", "pretrained", "dimensions", "precision", "scores"}


@pytest.fixture(scope="module")
def fuzzed_app(tiny_embedder):
    # Small limits, so the fuzzer's boundary cases (limit, limit + 1) are cheap to run.
    return weaviate_app(tiny_embedder, max_texts=6, max_urls=4, max_text_chars=300, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzzed_app)


# Only these routes: test_openapi.py fuzzes the rest.
schema = schemathesis.pytest.from_fixture("api_schema").include(tag="weaviate")


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_routes_conform_to_their_document_under_fuzzing(case, fuzzed_app):
    # Every default check, except that no schema can say a string is a base64 image file:
    # a request with images may be refused (400) though the document allows its shape.
    has_images = isinstance(case.body, dict) and bool(case.body.get("images"))
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance] if has_images else [])
    assert response.status_code < 500
    if response.status_code >= 400:
        assert set(response.json()) == ERROR_FIELDS
        assert_still_serving(fuzzed_app.test_client())
