"""The OpenAPI document describes every endpoint, field, limit and error; the API is fuzzed against it."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from clip_service import create_app
from clip_service.images.errors import ItemError

EMBED_PATHS = ["/embed/text", "/embed/image", "/embed/mixed"]


def _resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        node = spec["components"][kind][name]
    return node


def _request_schema(spec: dict, path: str) -> dict:
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    return _resolve(spec, body["content"]["application/json"]["schema"])


def test_the_document_is_openapi_3_with_every_endpoint(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/embed/text", "/embed/image", "/embed/mixed", "/health"} <= set(spec["paths"])
    for path in EMBED_PATHS:
        assert set(spec["paths"][path]) == {"post"}


def test_the_interactive_docs_page_is_served(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "swagger-ui" in page and "/openapi.json" in page


@pytest.mark.parametrize("path, fields, required", [
    ("/embed/text", {"texts"}, ["texts"]),
    ("/embed/image", {"urls"}, ["urls"]),
    ("/embed/mixed", {"texts", "urls"}, None),
])
def test_request_bodies_document_every_field_and_refuse_others(client, path, fields, required):
    schema = _request_schema(client.get("/openapi.json").get_json(), path)
    # Every embedding route also takes the vectors' encoding and OpenAI's dimensions (the model's own only).
    assert schema["type"] == "object" and set(schema["properties"]) == fields | {"encoding", "dimensions"}
    assert schema["properties"]["dimensions"]["enum"] == [32]
    assert schema.get("required") == required
    assert schema["additionalProperties"] is False
    for field in fields:
        prop = schema["properties"][field]
        assert prop["type"] == "array" and prop["items"]["type"] == "string" and prop["description"]


def test_the_document_shows_the_configured_limits(tiny_embedder):
    client = create_app({"TESTING": True, "max_texts": 5, "max_urls": 3, "max_text_chars": 123,
                         "max_url_chars": 456, "max_body_bytes": 7890}, embedder=tiny_embedder).test_client()
    spec = client.get("/openapi.json").get_json()
    for path in ("/embed/text", "/embed/mixed"):
        texts = _request_schema(spec, path)["properties"]["texts"]
        assert texts["maxItems"] == 5 and texts["items"]["maxLength"] == 123
    for path in ("/embed/image", "/embed/mixed"):
        urls = _request_schema(spec, path)["properties"]["urls"]
        assert urls["maxItems"] == 3 and urls["items"]["maxLength"] == 456
    assert _request_schema(spec, "/embed/text")["properties"]["texts"]["minItems"] == 1
    assert "7890 bytes" in spec["info"]["description"]


def test_rank_documents_its_two_forms_with_their_limits(tiny_embedder):
    client = create_app({"TESTING": True, "max_texts": 5, "max_urls": 3, "max_text_chars": 123,
                         "max_url_chars": 456}, embedder=tiny_embedder).test_client()
    spec = client.get("/openapi.json").get_json()
    forms = _request_schema(spec, "/rank")["oneOf"]
    text_query, image_query = (_resolve(spec, form) for form in forms)
    # A text query ranks images (CLIP_MAX_URLS of them), an image query ranks texts (CLIP_MAX_TEXTS).
    assert text_query["properties"]["documents"]["maxItems"] == 3
    assert text_query["properties"]["query"]["maxLength"] == 123
    assert image_query["properties"]["documents"]["maxItems"] == 5
    assert image_query["properties"]["documents"]["items"]["maxLength"] == 123
    # Exactly one form fits a body: query_modality picks it, and only "image" picks the image form.
    assert text_query["properties"]["query_modality"]["enum"] == ["text"]
    assert image_query["properties"]["query_modality"]["enum"] == ["image"]
    assert "query_modality" in image_query["required"] and "query_modality" not in text_query["required"]
    # An image may be raw base64 or a data: URI, bounded by the body, not by CLIP_MAX_URL_CHARS.
    assert "maxLength" not in text_query["properties"]["documents"]["items"]
    assert "maxLength" not in image_query["properties"]["query"]


def test_the_default_limits_are_documented(client):
    texts = _request_schema(client.get("/openapi.json").get_json(), "/embed/text")["properties"]["texts"]
    assert texts["maxItems"] == 256 and texts["items"]["maxLength"] == 10_000


@pytest.mark.parametrize("path", EMBED_PATHS)
def test_every_error_answer_is_documented_with_the_envelope(client, path):
    spec = client.get("/openapi.json").get_json()
    responses = spec["paths"][path]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "default"} <= set(responses)
    for status in ("400", "413", "415", "422", "default"):
        response = _resolve(spec, responses[status])
        envelope = _resolve(spec, response["content"]["application/json"]["schema"])
        assert set(envelope["properties"]) == {"code", "status", "message", "errors"}
        assert set(envelope["required"]) == {"code", "status", "message", "errors"}


class OfflineFetcher:
    """Fails every URL at once: the fuzzer's URLs must never reach a network."""

    def __init__(self):
        self.calls = 0
        self.draft_size = None  # no draft decoding: part of the cache's image keys

    def fetch_all(self, sources, then):
        self.calls += 1
        return [ItemError("fetch_failed", "offline in this test") for _ in sources]


@pytest.fixture(scope="module")
def fuzzed_app(tiny_embedder):
    # Small limits, so the fuzzer's boundary cases (limit, limit + 1) are cheap to run.
    app = create_app({"TESTING": True, "max_texts": 6, "max_urls": 4, "max_text_chars": 300,
                      "max_url_chars": 200, "max_body_bytes": 64 * 1024, "max_labels": 6, "max_templates": 3,
                      "max_label_chars": 40, "max_label_texts": 12}, embedder=tiny_embedder,
                     fetcher=OfflineFetcher())
    return app


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzzed_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_document_under_fuzzing(case, fuzzed_app):
    # Every default check: no 5xx, documented status codes, content types and
    # headers, responses valid against their schemas, and data the document
    # forbids is refused with a 4xx.
    # /classify's single image and /rank's query image are answered 422 when they cannot be used,
    # which here (every image fails offline) is every such request: schema-valid, yet refused.
    # /v1/embeddings: input's maxItems is CLIP_MAX_TEXTS; that at most CLIP_MAX_URLS of them may be
    # images (with modality "image", all are) is a rule OpenAPI 3.0 can only state in words.
    excluded = [positive_data_acceptance] if case.operation.path in ("/classify", "/rank", "/v1/embeddings") else []
    response = case.call_and_validate(excluded_checks=excluded)
    assert response.status_code < 500
    if response.status_code >= 400:
        good = fuzzed_app.test_client().post("/embed/text", json={"texts": ["still fine"]})
        assert good.status_code == 200
