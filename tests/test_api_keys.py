"""API keys: every protected route refuses a request without a valid ``Authorization: Bearer`` key."""

from __future__ import annotations

import logging

import openai
import pytest

from clip_service import create_app
from clip_service.config import ConfigError, Settings
from clip_service.ops.gunicorn_logs import redact_query

from .helpers import TINY_MODEL
from .live_server import LiveServer

KEY_A = "a" * 8 + "-first-key-0123456789"
KEY_B = "b" * 8 + "-second-key-from-a-file"
WRONG = "c" * 8 + "-not-a-configured-key"

# (method, path, JSON body) of every route that needs a key.
PROTECTED = [
    ("POST", "/embed/text", {"texts": ["a cat"]}),
    ("POST", "/embed/image", {"urls": ["http://127.0.0.1:1/x.jpg"]}),
    ("POST", "/embed/mixed", {"texts": ["a cat"]}),
    ("POST", "/v1/embeddings", {"model": TINY_MODEL, "input": "a cat"}),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{TINY_MODEL}", None),
    ("GET", "/metrics", None),
]
PROBES = ["/health", "/health/live", "/health/ready"]


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text(f"# mounted from Secret Manager\n\n  {KEY_B}  \n")
    return path


@pytest.fixture(scope="module")
def keyed_app(tiny_embedder, keys_file):
    return create_app({"TESTING": True, "api_keys": f"{KEY_A}, ", "api_keys_file": str(keys_file)},
                      embedder=tiny_embedder)


def _call(client, method: str, path: str, body, headers=None, query: str = ""):
    return client.open(path + query, method=method, json=body, headers=headers or {})


def _assert_refused(response, path: str) -> None:
    assert response.status_code == 401, (path, response.get_data(as_text=True)[:300])
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json()
    if path.startswith("/v1/"):
        assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
    else:
        assert set(body) == {"code", "status", "message", "errors"} and body["code"] == 401


@pytest.mark.parametrize("method, path, body", PROTECTED)
@pytest.mark.parametrize("headers, query", [
    ({}, ""),                                              # no key
    ({"Authorization": f"Bearer {WRONG}"}, ""),            # a wrong key
    ({"Authorization": f"Bearer {KEY_A[:-1]}"}, ""),       # one character short
    ({"Authorization": f"Bearer {KEY_A}x"}, ""),           # one character too many
    ({"Authorization": KEY_A}, ""),                        # "Bearer" missing
    ({"Authorization": f"Bearr {KEY_A}"}, ""),             # misspelled
    ({"Authorization": f"Basic {KEY_A}"}, ""),             # another scheme
    ({"Authorization": "Bearer "}, ""),                    # no key after the scheme
    ({}, f"?api_key={KEY_A}"),                             # in the query string
    ({}, f"?key={KEY_A}"),
])
def test_protected_routes_refuse_without_a_valid_key(keyed_app, method, path, body, headers, query):
    _assert_refused(_call(keyed_app.test_client(), method, path, body, headers, query), path)


@pytest.mark.parametrize("method, path, body", PROTECTED)
@pytest.mark.parametrize("key", [KEY_A, KEY_B])
def test_every_configured_key_is_accepted(keyed_app, method, path, body, key):
    response = _call(keyed_app.test_client(), method, path, body, {"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]


def test_the_scheme_is_case_insensitive(keyed_app):
    response = keyed_app.test_client().post("/embed/text", json={"texts": ["x"]},
                                            headers={"Authorization": f"bearer {KEY_A}"})
    assert response.status_code == 200


def test_a_key_in_the_url_gets_a_hint(keyed_app):
    body = keyed_app.test_client().post(f"/embed/text?api_key={KEY_A}", json={"texts": ["x"]}).get_json()
    assert "Authorization header" in body["message"] and KEY_A not in body["message"]


@pytest.mark.parametrize("path", PROBES)
def test_probes_stay_open(keyed_app, path):
    assert keyed_app.test_client().get(path).status_code == 200


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_docs_are_open_by_default_and_can_be_closed(keyed_app, tiny_embedder, keys_file, path):
    assert keyed_app.test_client().get(path).status_code == 200
    closed = create_app({"TESTING": True, "api_keys": KEY_A, "public_docs": False}, embedder=tiny_embedder)
    _assert_refused(closed.test_client().get(path), path)
    assert closed.test_client().get(path, headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 200


def test_protected_metrics_count_requests_by_key_id_only(keyed_app):
    client = keyed_app.test_client()
    auth = {"Authorization": f"Bearer {KEY_A}"}
    client.post("/embed/text", json={"texts": ["x"]}, headers=auth)
    client.post("/embed/text", json={"texts": ["x"]})
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    from clip_service.web.auth import key_id
    assert f'clip_requests_by_key_total{{key_id="{key_id(KEY_A)}"}}' in text
    assert 'clip_auth_failures_total{reason="missing"}' in text
    assert KEY_A not in text and KEY_B not in text


def test_public_metrics_answer_without_a_key_and_show_no_key_ids(tiny_embedder):
    from clip_service.web.auth import key_id
    only_here = "e" * 24  # a key no other test uses, so no other test's counts can show up under its id
    app = create_app({"TESTING": True, "api_keys": only_here, "public_metrics": True}, embedder=tiny_embedder)
    client = app.test_client()
    assert client.post("/embed/text", json={"texts": ["x"]},
                       headers={"Authorization": f"Bearer {only_here}"}).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200 and key_id(only_here) not in response.get_data(as_text=True)


def test_keys_and_headers_never_reach_the_logs(keyed_app, caplog):
    caplog.set_level(logging.DEBUG)
    client = keyed_app.test_client()
    client.post("/embed/text", json={"texts": ["x"]}, headers={"Authorization": f"Bearer {KEY_A}"})
    client.post("/embed/text", json={"texts": ["x"]}, headers={"Authorization": f"Bearer {WRONG}"})
    client.post(f"/embed/text?api_key={KEY_B}", json={"texts": ["x"]})
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert KEY_A not in logged and KEY_B not in logged and WRONG not in logged
    from clip_service.web.auth import key_id
    summaries = [r for r in caplog.records if r.name == "clip_service.request"]
    assert [getattr(r, "key_id", None) for r in summaries] == [key_id(KEY_A), None, None]
    assert [r.status for r in summaries] == [200, 401, 401]


def test_the_access_log_keeps_parameter_names_and_no_query_value():
    # A key may travel under any name (?k=, ?Bearer=) or none (?<key>): every value goes.
    assert redact_query(f"api_key={KEY_A}&size=2&access_token=x&Key=y") == \
        "api_key=REDACTED&size=REDACTED&access_token=REDACTED&Key=REDACTED"
    assert redact_query(f"a=1&{KEY_A}") == "a=REDACTED&REDACTED"


def test_an_open_service_says_so_once_at_start(tiny_embedder, caplog):
    with caplog.at_level(logging.WARNING):
        create_app({"TESTING": True}, embedder=tiny_embedder)
    warnings = [r for r in caplog.records if "API keys are off" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING" and "README" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_app({"TESTING": True, "api_keys": KEY_A}, embedder=tiny_embedder)
    assert not [r for r in caplog.records if "API keys are off" in r.getMessage()]


@pytest.mark.parametrize("env, needle", [
    ({"CLIP_API_KEYS": "short-key"}, "CLIP_API_KEYS=(value not shown) is invalid: key 1 has 9 characters"),
    ({"CLIP_API_KEYS": f"{KEY_A},tiny"}, "CLIP_API_KEYS=(value not shown) is invalid: key 2 has 4 characters"),
    ({"CLIP_API_KEYS_FILE": "/no/such/keys"}, "CLIP_API_KEYS_FILE='/no/such/keys' is invalid: cannot be read"),
])
def test_short_keys_and_missing_files_refuse_the_start(env, needle):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert needle in message and "\n" not in message and "short-key" not in message and "tiny" not in message


def test_a_short_key_in_the_file_is_named_by_its_line(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"{KEY_A}\nsecret\n")
    with pytest.raises(ConfigError, match=r"CLIP_API_KEYS_FILE='.*keys' is invalid: key 2 has 6 characters") as refused:
        Settings.from_env({"CLIP_API_KEYS_FILE": str(path)})
    assert "secret" not in str(refused.value)


@pytest.fixture(scope="module")
def keyed_server(keyed_app):
    with LiveServer(keyed_app) as live:
        yield live.url


def test_the_openai_package_sends_its_api_key(keyed_server):
    good = openai.OpenAI(base_url=f"{keyed_server}/v1", api_key=KEY_B, max_retries=0, timeout=30)
    assert len(good.embeddings.create(model=TINY_MODEL, input="a cat").data[0].embedding) == 32
    bad = openai.OpenAI(base_url=f"{keyed_server}/v1", api_key=WRONG, max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.embeddings.create(model=TINY_MODEL, input="a cat")
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
