"""A lone surrogate (JSON's "\\ud800" escape) is not text: every route refuses it when the body is loaded.

It parses (JSON allows the escape) but UTF-8 cannot encode it, so an answer
that echoed it (a /classify label, a /rank document) failed after the model
had run. Each family answers in its own error shape, naming the field, with
no model work, and the next request is served.
"""

from __future__ import annotations

import base64
import json

import pytest

from clip_service import create_app

from .helpers import FIXTURES, TINY_MODEL, assert_envelope, assert_openai_error, assert_still_serving

S = "\ud800"
IMAGE = base64.b64encode((FIXTURES / "camera.png").read_bytes()).decode()


@pytest.fixture(scope="module")
def app(tiny_embedder):
    return create_app({"TESTING": True, "weaviate": True}, embedder=tiny_embedder)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def model_runs(app, monkeypatch):
    """Every text or image batch the pipeline embeds during the test, as (modality, count)."""
    pipeline, runs = app.extensions["clip_pipeline"], []
    observed = pipeline.on_embedded

    def record(modality, count):
        runs.append((modality, count))
        if observed is not None:
            observed(modality, count)

    monkeypatch.setattr(pipeline, "on_embedded", record)
    return runs


def post(client, path, body):
    # json.dumps writes the surrogate as the \ud800 escape a client would send (ensure_ascii).
    return client.post(path, data=json.dumps(body), content_type="application/json")


def _at(errors: dict, *path):
    for key in path:
        errors = errors[key]
    return errors


CLASSIFY = {"inputs": IMAGE, "parameters": {"candidate_labels": ["cat", "dog"]}}


@pytest.mark.parametrize("path, body, where", [
    ("/classify", {"inputs": IMAGE, "parameters": {"candidate_labels": ["cat", "dog" + S]}},
     ("parameters", "candidate_labels", "1")),
    ("/classify", {"inputs": [IMAGE], "parameters": {"candidate_labels": [S]}},
     ("parameters", "candidate_labels", "0")),
    ("/classify", {"inputs": IMAGE, "parameters": {"candidate_labels": ["cat"], "hypothesis_template": "{} " + S}},
     ("parameters", "hypothesis_template")),
    ("/classify", {"inputs": IMAGE, "parameters": {"candidate_labels": ["cat"],
                                                   "hypothesis_template": ["{}", "a {} " + S]}},
     ("parameters", "hypothesis_template", "1")),
    ("/classify", {"inputs": [IMAGE, "http://example.com/" + S], "parameters": {"candidate_labels": ["cat"]}},
     ("inputs", "1")),
    ("/rank", {"query": IMAGE, "query_modality": "image", "documents": ["a cat", "a " + S],
               "return_documents": True}, ("documents", "1")),
    ("/rank", {"query": "a cat " + S, "documents": [IMAGE], "return_documents": True}, ("query",)),
    ("/rank", {"query": "http://example.com/" + S, "query_modality": "image", "documents": ["a cat"]}, ("query",)),
    ("/rank", {"query": "a cat", "documents": [IMAGE], "scores": S}, ("scores",)),
    ("/rank", {"query": "a cat", "documents": [IMAGE], "query_modality": S}, ("query_modality",)),
    ("/embed/text", {"texts": ["a cat", S]}, ("texts", "1")),
    ("/embed/image", {"urls": ["http://example.com/" + S]}, ("urls", "0")),
    ("/embed/mixed", {"texts": [S], "urls": []}, ("texts", "0")),
    ("/embed/mixed", {"texts": ["a cat"], "urls": ["http://example.com/a.jpg" + S]}, ("urls", "0")),
])
def test_the_service_api_refuses_a_lone_surrogate_naming_the_field(client, model_runs, path, body, where):
    errors = assert_envelope(post(client, path, body), 422)["errors"]
    message = _at(errors, *where)
    assert "lone surrogate" in message[0]
    assert model_runs == []  # refused before any work
    assert post(client, "/classify", CLASSIFY).status_code == 200
    assert_still_serving(client)


@pytest.mark.parametrize("body, where", [
    ({"inputs": IMAGE, "parameters": {"candidate_labels": ["cat"]}, S: 1}, ("_schema",)),
    ({"inputs": IMAGE, "parameters": {"candidate_labels": ["cat"], S: True}}, ("parameters", "_schema")),
    ({"inputs": IMAGE, "parameters": {"candidate_labels": ["cat"], "x" + S: [S]}}, ("parameters", "_schema")),
])
def test_a_name_holding_a_lone_surrogate_is_an_unknown_field_and_not_echoed(client, model_runs, body, where):
    errors = assert_envelope(post(client, "/classify", body), 422)["errors"]
    assert _at(errors, *where)[0].startswith("Unknown field")
    assert model_runs == []
    assert post(client, "/classify", CLASSIFY).status_code == 200


@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff", "\udc00\ud800", "cat \udbff"])
def test_every_lone_surrogate_is_refused_and_a_pair_is_text(client, surrogate):
    response = post(client, "/classify", {"inputs": IMAGE, "parameters": {"candidate_labels": ["cat", surrogate]}})
    assert "1" in assert_envelope(response, 422)["errors"]["parameters"]["candidate_labels"]
    # "\ud83d\ude3a", a pair of escapes, is one character (a cat's face): text, and echoed as sent.
    answer = post(client, "/classify", {"inputs": IMAGE, "parameters": {"candidate_labels": ["cat", "\U0001f63a"]}})
    assert answer.status_code == 200
    assert {entry["label"] for entry in answer.get_json()} == {"cat", "\U0001f63a"}


def test_ranked_documents_that_are_text_are_echoed(client):
    response = post(client, "/rank", {"query": IMAGE, "query_modality": "image", "return_documents": True,
                                      "documents": ["caf\u00e9", "\U0001f63a"]})
    assert response.status_code == 200
    assert {r["document"] for r in response.get_json()["results"]} == {"caf\u00e9", "\U0001f63a"}


@pytest.mark.parametrize("body, param", [
    ({"model": TINY_MODEL, "input": S}, "input"),
    ({"model": TINY_MODEL, "input": ["a cat", "a " + S]}, "input[1]"),
    ({"model": TINY_MODEL, "input": ["http://example.com/" + S], "modality": "image"}, "input[0]"),
    ({"model": S, "input": "a cat"}, "model"),
    ({"model": TINY_MODEL + S, "input": "a cat"}, "model"),
    ({"model": TINY_MODEL, "input": "a cat", "user": S}, "user"),
    ({"model": TINY_MODEL, "input": "a cat", "encoding_format": S}, "encoding_format"),
    ({"model": TINY_MODEL, "input": "a cat", S: 1}, None),
])
def test_openai_refuses_a_lone_surrogate_in_its_shape(client, model_runs, body, param):
    error = assert_openai_error(post(client, "/v1/embeddings", body), 400, param=param)
    assert "lone surrogate" in error["message"] or "Unknown field" in error["message"]
    assert model_runs == []
    assert post(client, "/v1/embeddings", {"model": TINY_MODEL, "input": "still fine"}).status_code == 200


@pytest.mark.parametrize("body, named", [
    ({"texts": ["a cat", S]}, "texts[1]"),
    ({"images": [S]}, "images[0]"),
    ({"texts": ["a cat"], S: ["a cat"]}, "field name"),
])
def test_weaviate_refuses_a_lone_surrogate_in_its_shape(client, model_runs, body, named):
    response = post(client, "/vectorize", body)
    assert response.status_code == 422 and response.is_json
    error = response.get_json()
    assert set(error) == {"error"} and named in error["error"] and "lone surrogate" in error["error"]
    assert model_runs == []
    assert post(client, "/vectorize", {"texts": ["still fine"]}).status_code == 200
