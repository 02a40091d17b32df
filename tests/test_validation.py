"""Every bad request gets a 4xx in the one JSON envelope, echoes nothing it was sent, and leaves the app serving."""

from __future__ import annotations

import io
import json

import pytest

from clip_service import create_app

from .helpers import SECRET, assert_envelope, assert_still_serving

GOOD = {"texts": ["still fine"]}


def post_raw(client, path: str, data, content_type: str | None = "application/json", **kwargs):
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post(path, data=data, headers=headers, **kwargs)


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/xml", "application/json; charset=latin-1", "application/json; charset=utf-16",
])
@pytest.mark.parametrize("path", ["/embed/text", "/embed/image", "/embed/mixed"])
def test_a_missing_or_wrong_content_type_is_415(client, path, content_type):
    if path == "/embed/image" and content_type and content_type.startswith("multipart/"):
        # /embed/image takes uploads: a multipart body without images is 422 (tests/test_uploads.py).
        assert_envelope(post_raw(client, path, json.dumps(GOOD), content_type), 422)
        return
    body = assert_envelope(post_raw(client, path, json.dumps(GOOD), content_type), 415)
    assert "application/json" in body["message"] or "UTF-8" in body["message"]
    assert_still_serving(client)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=UTF-8",
                                          "application/json;charset=utf8", "application/vnd.api+json"])
def test_json_content_types_are_accepted(client, content_type):
    assert post_raw(client, "/embed/text", json.dumps(GOOD), content_type).status_code == 200


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"   \n\t ", "empty"),
    (b"{", "not valid JSON"),
    (b'{"texts": ["a",]}', "not valid JSON"),
    (b"{'texts': ['a']}", "not valid JSON"),
    (b'{"texts": ["a"]} trailing', "not valid JSON"),
    (b'{"texts": [NaN]}', "not valid JSON"),
    (b'{"texts": [Infinity]}', "not valid JSON"),
    (b'{"texts": ["' + SECRET.encode() + b'\x01"]', "not valid JSON"),
    (b'{"texts": ["caf\xe9"]}', "UTF-8"),                       # Latin-1, not UTF-8
    (b'{"texts": ["\xed\xa0\x80"]}', "UTF-8"),                  # a surrogate encoded raw in "UTF-8"
    (b"\xff\xfe{\x00}\x00", "UTF-8"),                           # UTF-16 with BOM
    (b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b"[" * 5000, "nested too deeply"),
    (b'{"a":' * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
])
@pytest.mark.parametrize("path", ["/embed/text", "/embed/image", "/embed/mixed"])
def test_a_body_that_is_not_json_is_400(client, path, data, reason):
    body = assert_envelope(post_raw(client, path, data), 400)
    assert reason in body["message"]
    assert_still_serving(client)


@pytest.mark.parametrize("path", ["/embed/text", "/embed/image", "/embed/mixed"])
@pytest.mark.parametrize("document", [[], ["a cat"], "a cat", 1, 1.5, True, None])
def test_a_top_level_that_is_not_an_object_is_422(client, path, document):
    body = assert_envelope(post_raw(client, path, json.dumps(document)), 422)
    assert body["errors"] == {"_schema": ["Invalid input type."]}
    assert_still_serving(client)


TEXT_CASES = [
    ({}, "texts", "Missing data for required field."),
    ({"texts": None}, "texts", "Field may not be null."),
    ({"texts": []}, "texts", "Send at least one text."),
    ({"texts": SECRET}, "texts", "Not a valid list."),
    ({"texts": {"0": SECRET}}, "texts", "Not a valid list."),
    ({"texts": 3}, "texts", "Not a valid list."),
    ({"texts": True}, "texts", "Not a valid list."),
]
URL_CASES = [
    ({}, "urls", "Missing data for required field."),
    ({"urls": None}, "urls", "Field may not be null."),
    ({"urls": []}, "urls", "Send at least one URL."),
    ({"urls": "http://127.0.0.1/" + SECRET}, "urls", "Not a valid list."),
    ({"urls": {"u": "http://127.0.0.1/x.jpg"}}, "urls", "Not a valid list."),
]


@pytest.mark.parametrize("path, body, field, message",
                         [("/embed/text", *case) for case in TEXT_CASES]
                         + [("/embed/image", *case) for case in URL_CASES]
                         + [("/embed/mixed", {"texts": SECRET}, "texts", "Not a valid list."),
                            ("/embed/mixed", {"urls": 7}, "urls", "Not a valid list.")])
def test_missing_and_wrongly_typed_fields_are_422_by_field(client, path, body, field, message):
    errors = assert_envelope(client.post(path, json=body), 422)["errors"]
    assert errors == {field: [message]}
    assert_still_serving(client)


@pytest.mark.parametrize("item, message", [
    (None, "Field may not be null."),
    (0, "Not a valid string."),
    (-1.5, "Not a valid string."),
    (True, "Not a valid string."),
    ([SECRET], "Not a valid string."),
    ({"text": SECRET}, "Not a valid string."),
])
@pytest.mark.parametrize("path, field", [("/embed/text", "texts"), ("/embed/image", "urls"),
                                         ("/embed/mixed", "texts"), ("/embed/mixed", "urls")])
def test_items_that_are_not_strings_are_422_by_index(client, path, field, item, message):
    errors = assert_envelope(client.post(path, json={field: ["ok", item]}), 422)["errors"]
    assert errors == {field: {"1": [message]}}
    assert_still_serving(client)


@pytest.mark.parametrize("path, body", [
    ("/embed/mixed", {}),
    ("/embed/mixed", {"texts": [], "urls": []}),
    ("/embed/mixed", {"texts": []}),
])
def test_an_empty_request_is_422(client, path, body):
    errors = assert_envelope(client.post(path, json=body), 422)["errors"]
    assert errors == {"_schema": ["Send at least one text or URL."]}
    assert_still_serving(client)


@pytest.mark.parametrize("path, body", [
    ("/embed/text", {"texts": ["a"], "text": ["b"]}),
    ("/embed/text", {"texts": ["a"], SECRET * 1000: 1}),
    ("/embed/image", {"urls": ["http://127.0.0.1/a.jpg"], "texts": ["a"]}),
    ("/embed/mixed", {"texts": ["a"], "images": []}),
])
def test_unknown_fields_are_422_without_echoing_their_names(client, path, body):
    errors = assert_envelope(client.post(path, json=body), 422)["errors"]
    assert list(errors) == ["_schema"] and errors["_schema"][0].startswith("Unknown field")
    assert_still_serving(client)


def test_an_unknown_field_named_by_a_lone_surrogate_is_422(client):
    response = post_raw(client, "/embed/text", b'{"texts": ["a"], "\\udc00": 1}')
    assert assert_envelope(response, 422)["errors"]["_schema"][0].startswith("Unknown field")
    assert_still_serving(client)


@pytest.fixture(scope="module")
def small_limits_client(tiny_embedder):
    app = create_app({"TESTING": True, "max_texts": 3, "max_urls": 2, "max_text_chars": 20,
                      "max_url_chars": 40, "max_body_bytes": 4096}, embedder=tiny_embedder)
    return app.test_client()


@pytest.mark.parametrize("path, body, errors", [
    ("/embed/text", {"texts": ["a"] * 4}, {"texts": ["At most 3 items per request."]}),
    ("/embed/text", {"texts": [""] * 500}, {"texts": ["At most 3 items per request."]}),
    ("/embed/text", {"texts": ["ok", SECRET + "x" * 20]}, {"texts": {"1": ["Longer than 20 characters."]}}),
    ("/embed/image", {"urls": ["http://127.0.0.1/a.jpg"] * 3}, {"urls": ["At most 2 items per request."]}),
    ("/embed/image", {"urls": ["http://127.0.0.1/" + SECRET * 3]}, {"urls": {"0": ["Longer than 40 characters."]}}),
    ("/embed/mixed", {"texts": ["a"] * 4, "urls": ["u"] * 3},
     {"texts": ["At most 3 items per request."], "urls": ["At most 2 items per request."]}),
])
def test_too_many_items_and_too_long_strings_are_422(small_limits_client, path, body, errors):
    assert assert_envelope(small_limits_client.post(path, json=body), 422)["errors"] == errors
    assert_still_serving(small_limits_client)


def test_limits_at_the_boundary_are_accepted(small_limits_client):
    response = small_limits_client.post("/embed/text", json={"texts": ["x" * 20] * 3})
    assert response.status_code == 200 and len(response.get_json()["embeddings"]) == 3


def test_a_body_over_the_limit_is_413(small_limits_client):
    body = json.dumps({"texts": ["a"] * 2000}).encode()
    assert len(body) > 4096
    message = assert_envelope(post_raw(small_limits_client, "/embed/text", body), 413)["message"]
    assert "4096 bytes" in message
    assert_still_serving(small_limits_client)


@pytest.mark.parametrize("size", [4097, 10 * 1024 * 1024])
def test_a_chunked_body_over_the_limit_is_413(small_limits_client, size):
    # No Content-Length: the WSGI server de-chunks and says so (Gunicorn sets
    # wsgi.input_terminated), and Werkzeug stops reading at the limit.
    stream = io.BytesIO(b'{"texts": ["' + b"a" * size + b'"]}')
    response = small_limits_client.post(
        "/embed/text", input_stream=stream, headers={"Content-Type": "application/json",
                                                     "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})
    assert_envelope(response, 413)
    assert stream.tell() <= 4096 + 64 * 1024  # it stopped reading near the limit
    assert_still_serving(small_limits_client)


def test_a_chunked_body_under_the_limit_is_served(small_limits_client):
    response = small_limits_client.post(
        "/embed/text", input_stream=io.BytesIO(json.dumps({"texts": ["a cat"]}).encode()),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 200


def test_limits_are_read_from_the_environment(tiny_embedder, monkeypatch):
    monkeypatch.setenv("CLIP_MAX_TEXTS", "2")
    monkeypatch.setenv("CLIP_MAX_TEXT_CHARS", "5")
    monkeypatch.setenv("CLIP_MAX_BODY_BYTES", "100")
    client = create_app({"TESTING": True}, embedder=tiny_embedder).test_client()
    assert client.post("/embed/text", json={"texts": ["a", "b", "c"]}).status_code == 422
    assert client.post("/embed/text", json={"texts": ["abcdef"]}).status_code == 422
    assert client.post("/embed/text", json={"texts": ["a" * 200]}).status_code == 413
    assert client.post("/embed/text", json={"texts": ["abcde", "b"]}).status_code == 200


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nowhere", 404), ("POST", "/embed", 404), ("GET", "/embed/text/extra", 404),
    ("GET", "/" + SECRET, 404),
    ("GET", "/embed/text", 405), ("PUT", "/embed/image", 405), ("DELETE", "/embed/mixed", 405),
    ("POST", "/health", 405), ("PATCH", "/openapi.json", 405),
])
def test_unknown_paths_and_wrong_methods_use_the_envelope(client, method, path, status):
    response = client.open(path, method=method)
    assert_envelope(response, status)
    if status == 405:
        assert response.headers["Allow"]
    assert_still_serving(client)


def test_an_unexpected_error_is_a_500_envelope_without_a_traceback(app, monkeypatch):
    def broken(texts):
        raise RuntimeError("secret internals " + SECRET)

    monkeypatch.setattr(app.extensions["clip_embedder"], "embed_tokens", broken)
    body = assert_envelope(app.test_client().post("/embed/text", json=GOOD), 500)
    assert body["message"] == "internal error"
