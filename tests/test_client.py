"""clip_service.client against the real app behind a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import email.utils
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from urllib3 import HTTPResponse
from urllib3.exceptions import ReadTimeoutError

from clip_service.client import (
    AuthenticationError,
    ClipClient,
    DeadlineExceeded,
    Limits,
    NotAClipService,
    ServiceUnavailable,
    ServiceUnreachable,
)
from clip_service.client.sources import data_uri
from clip_service.client.transport import RetryPolicy, Transport

from .helpers import FIXTURES
from .live_server import Flaky, LiveServer, Recorder, RequiresKey
from .support.gunicorn import GunicornProcess, free_port

ROOT = Path(__file__).parent.parent
TEXTS = ["a photo of a cat", "a cup of coffee", "", "an astronaut"]


@pytest.fixture
def server(app):
    with LiveServer(app) as live:
        yield live


def service_vectors(client, path: str, field: str, values: list) -> np.ndarray:
    response = client.post(path, json={field: values})
    assert response.status_code == 200, response.get_json()
    return np.array(response.get_json()["embeddings"], dtype=np.float32)


# --- the same vectors as the service ---------------------------------------------------------------

def test_text_vectors_equal_the_services(server, client):
    with ClipClient(server.url) as clip:
        result = clip.embed_texts(TEXTS)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (4, 32)
    assert result.errors == [] and result.ok.all()
    assert result.model == "clip-service-tiny"
    np.testing.assert_allclose(result.vectors, service_vectors(client, "/embed/text", "texts", TEXTS), atol=1e-6)


def test_the_model_info_names_the_services_precision(server, client):
    served = client.get("/v1/models").get_json()["data"][0]["precision"]
    assert served in ("fp32", "bf16")
    with ClipClient(server.url) as clip:
        assert clip.model_info().precision == served
        assert clip.embed_texts(["a cat"]).precision == served


def test_every_kind_of_image_input_gives_the_services_vector(server, client, image_server, photos):
    path = FIXTURES / "chelsea_0.jpg"
    inputs = [str(path), path, image_server.url("/chelsea_0.jpg"), photos["chelsea_0.jpg"],
              io.BytesIO(photos["chelsea_0.jpg"]), Image.open(path), data_uri(photos["chelsea_0.jpg"])]
    with ClipClient(server.url) as clip:
        result = clip.embed_images(inputs)
    assert result.errors == []
    expected = service_vectors(client, "/embed/image", "urls", [image_server.url("/chelsea_0.jpg")])[0]
    # A PIL image travels as lossless PNG of the same pixels, so it too gives the JPEG's vector.
    np.testing.assert_allclose(result.vectors, np.tile(expected, (len(inputs), 1)), atol=1e-6)


def test_a_failed_item_is_a_value_and_the_others_still_come_back(server, client, image_server, photos):
    inputs = [image_server.url("/coffee_0.jpg"), b"not an image", "/no/such/file.jpg",
              image_server.url("/missing.png"), 42, FIXTURES / "camera.png"]
    with ClipClient(server.url) as clip:
        result = clip.embed_images(inputs)
    assert [(e.index, e.code) for e in result.errors] == [
        (1, "not_an_image"), (2, "unreadable_file"), (3, "upstream_status"), (4, "invalid_input")]
    assert result.errors[2].source == image_server.url("/missing.png")
    assert list(result.ok) == [True, False, False, False, False, True]
    assert np.isnan(result.vectors[~result.ok]).all()
    expected = service_vectors(client, "/embed/image", "urls",
                               [image_server.url("/coffee_0.jpg"), image_server.url("/camera.png")])
    np.testing.assert_allclose(result.vectors[result.ok], expected, atol=1e-6)


def test_texts_the_service_would_refuse_are_values_not_sent(make_app):
    recorder = Recorder(make_app(max_text_chars=20))
    with LiveServer(recorder) as live, ClipClient(live.url) as clip:
        result = clip.embed_texts(["short", "x" * 21, "bad \ud800 text", "also short"])
    assert [(e.index, e.code) for e in result.errors] == [(1, "too_long"), (2, "invalid_input")]
    assert [n for _, _, n, _ in recorder.posts("/embed/text")] == [2]


# --- batches as the service allows -----------------------------------------------------------------

@pytest.mark.parametrize("max_texts, max_urls", [(3, 2), (5, 4)])
def test_batches_follow_the_limits_in_the_services_openapi_document(make_app, image_server, max_texts, max_urls):
    recorder = Recorder(make_app(max_texts=max_texts, max_urls=max_urls))
    texts = [f"text number {i}" for i in range(11)]
    images = [image_server.url(f"/{name}") for name in ("chelsea_0.jpg", "coffee_0.jpg", "camera.png")] * 3
    with LiveServer(recorder) as live, ClipClient(live.url) as clip:
        assert (clip.limits().max_texts, clip.limits().max_urls) == (max_texts, max_urls)
        text_result = clip.embed_texts(texts)
        image_result = clip.embed_images(images)
    assert text_result.ok.all() and image_result.ok.all()
    sent = [n for _, _, n, _ in recorder.posts("/embed/text")]
    assert sum(sent) == 11 and max(sent) == max_texts and len(sent) == -(-11 // max_texts)
    sent = [n for _, _, n, _ in recorder.posts("/embed/image")]
    assert sum(sent) == 9 and max(sent) == max_urls and len(sent) == -(-9 // max_urls)


def test_a_body_over_the_services_limit_is_halved_until_only_the_too_large_image_fails(make_app, photos):
    # Base64 makes chelsea 86 kB and coffee 99 kB: each fits under 150 kB, camera (186 kB) does not.
    recorder = Recorder(make_app(max_body_bytes=150_000))
    names = ["chelsea_0.jpg", "coffee_0.jpg", "camera.png"]
    with LiveServer(recorder) as live, ClipClient(live.url) as clip:
        result = clip.embed_images([photos[n] for n in names])
    assert [(e.index, e.code) for e in result.errors] == [(2, "too_large")]
    reference = make_app().test_client()
    np.testing.assert_allclose(result.vectors[:2], service_vectors(
        reference, "/embed/image", "urls", [data_uri(photos[n]) for n in names[:2]]), atol=1e-6)


def test_batches_stay_under_max_request_bytes(make_app, photos):
    recorder = Recorder(make_app())
    with LiveServer(recorder) as live, ClipClient(live.url, max_request_bytes=200_000) as clip:
        result = clip.embed_images([photos["chelsea_0.jpg"]] * 5)
    assert result.ok.all()
    # 86 kB each: two fit in 200 kB, three do not.
    assert [n for _, _, n, _ in recorder.posts("/embed/image")] == [2, 2, 1]


def test_an_item_that_breaks_the_service_is_isolated(app):
    def poison(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if b"POISON" in body:
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return [b'{"code": 500, "status": "Internal Server Error", "message": "internal error", "errors": {}}']
        environ["wsgi.input"] = io.BytesIO(body)
        return app(environ, start_response)

    with LiveServer(poison) as live, ClipClient(live.url) as clip:
        result = clip.embed_texts(["a", "b", "POISON", "c", "d"])
    assert [(e.index, e.code, e.message) for e in result.errors] == [(2, "service_error", "internal error")]
    assert result.ok.sum() == 4


@pytest.fixture(scope="module")
def tiny_gunicorn(tiny_checkpoint, tmp_path_factory):
    """A real ``gunicorn`` serving the tiny model: werkzeug's test server closes every connection."""
    server = GunicornProcess({"CLIP_MODEL": "clip-service-tiny", "CLIP_PRETRAINED": str(tiny_checkpoint),
                              "CLIP_WORKERS": "1", "CLIP_THREADS": "4"},
                             tmp_path_factory.mktemp("gunicorn") / "gunicorn.log", app="tests.tiny_wsgi:app")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.mark.e2e
def test_connections_are_kept_alive_and_reused(tiny_gunicorn):
    with ClipClient(tiny_gunicorn.base) as clip:
        for _ in range(5):
            assert clip.embed_texts(["one", "two"]).ok.all()
        pools = clip._http.session.get_adapter(tiny_gunicorn.base).poolmanager.pools
        counts = [(pools[key].num_connections, pools[key].num_requests) for key in pools.keys()]
    # One connection for GET /openapi.json and five calls: every request after the first reused it.
    assert counts == [(1, 6)]


# --- retries, deadlines, keys ------------------------------------------------------------------------

@pytest.mark.parametrize("status", [503, 429])
def test_retries_wait_what_retry_after_asks(app, client, status):
    recorder = Recorder(Flaky(app, failures=2, status=status, headers=[("Retry-After", "1")]))
    with LiveServer(recorder) as live, ClipClient(live.url) as clip:
        result = clip.embed_texts(["a photo of a cat"])
    arrivals = [t for _, _, _, t in recorder.posts("/embed/text")]
    assert len(arrivals) == 3
    gaps = np.diff(arrivals)
    # At least the second asked for; at most that plus the 10% jitter and this machine's slack.
    assert all(1.0 <= gap < 1.9 for gap in gaps), gaps
    np.testing.assert_allclose(result.vectors, service_vectors(client, "/embed/text", "texts", ["a photo of a cat"]),
                               atol=1e-6)


def test_without_retry_after_the_waits_grow_with_jitter(app):
    recorder = Recorder(Flaky(app, failures=3))
    with LiveServer(recorder) as live, ClipClient(live.url, backoff=0.2) as clip:
        assert clip.embed_texts(["x"]).ok.all()
    gaps = np.diff([t for _, _, _, t in recorder.posts("/embed/text")])
    # Equal jitter: attempt n waits between half and all of 0.2 * 2**n seconds.
    assert len(gaps) == 3
    assert all(low <= gap < 2 * low + 0.6 for low, gap in zip((0.1, 0.2, 0.4), gaps)), gaps


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried_too(app, status):
    recorder = Recorder(Flaky(app, failures=2, status=status))
    with LiveServer(recorder) as live, ClipClient(live.url, backoff=0.01) as clip:
        assert clip.embed_texts(["x"]).ok.all()
    assert len(recorder.posts("/embed/text")) == 3


@pytest.mark.parametrize("status, headers", [(500, []), (400, []), (404, []), (413, [("Retry-After", "1")])])
def test_every_other_answer_goes_back_to_the_caller_at_once(app, status, headers):
    recorder = Recorder(Flaky(app, failures=1, status=status, headers=headers))
    with LiveServer(recorder) as live:
        transport = Transport(live.url, api_key=None, timeout=10, connect_timeout=5, retry=RetryPolicy.make(),
                              pool_size=1, user_agent="test")
        try:
            answer = transport.post_json("/embed/text", {"texts": ["x"]}, time.monotonic() + 30)
        finally:
            transport.close()
    assert answer.status_code == status and len(recorder.calls) == 1


def test_gets_are_retried_like_posts(app):
    failed = []

    def busy_once(environ, start_response):
        if environ["REQUEST_METHOD"] == "GET" and not failed:
            failed.append(environ["PATH_INFO"])
            start_response("503 Service Unavailable", [("Content-Type", "application/json"), ("Retry-After", "0")])
            return [b'{"code": 503, "status": "Service Unavailable", "message": "busy", "errors": {}}']
        return app(environ, start_response)

    recorder = Recorder(busy_once)
    with LiveServer(recorder) as live, ClipClient(live.url) as clip:
        assert clip.limits().max_texts == 256
    assert failed == ["/openapi.json"] and [c[:2] for c in recorder.calls] == [("GET", "/openapi.json")] * 2


def test_a_slow_answer_is_cut_off_at_the_calls_deadline_not_the_request_timeout(app):
    def slow(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            time.sleep(2.5)  # then answers no one: the model is never reached from a thread left behind
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b"{}"]
        return app(environ, start_response)

    with LiveServer(slow) as live, ClipClient(live.url, timeout=60, backoff=0.01) as clip:
        clip.limits()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            clip.embed_texts(["x"], deadline=1.0)
        assert time.monotonic() - started < 1.6  # each try's timeout is what is left of the call's deadline


def test_a_retry_after_past_the_deadline_ends_the_call_at_once(app):
    recorder = Recorder(Flaky(app, failures=100, headers=[("Retry-After", "30")]))
    with LiveServer(recorder) as live, ClipClient(live.url, deadline=3) as clip:
        clip.limits()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            clip.embed_texts(["x"])
    assert time.monotonic() - started < 1.5
    assert len(recorder.posts("/embed/text")) == 1


def test_retries_end_after_the_last_one(app):
    recorder = Recorder(Flaky(app, failures=100))
    with LiveServer(recorder) as live, ClipClient(live.url, retries=2, backoff=0.01) as clip:
        with pytest.raises(ServiceUnavailable, match="503.*3 attempts"):
            clip.embed_texts(["x"])
    assert len(recorder.posts("/embed/text")) == 3


def test_connection_errors_are_retried_until_the_service_is_up(app):
    port = free_port()
    started = time.monotonic()
    late = {}

    def start_late():
        time.sleep(0.8)
        late["server"] = LiveServer(app, port=port).__enter__()

    thread = threading.Thread(target=start_late)
    thread.start()
    try:
        with ClipClient(f"http://127.0.0.1:{port}", backoff=0.2) as clip:
            result = clip.embed_texts(["x"])
        assert result.ok.all() and time.monotonic() - started >= 0.8
    finally:
        thread.join(5)
        if "server" in late:
            late["server"].__exit__()


def test_check_does_not_wait_for_an_address_where_nothing_listens():
    started = time.monotonic()
    with pytest.raises(ServiceUnreachable, match="cannot reach http://127.0.0.1"):
        ClipClient(f"http://127.0.0.1:{free_port()}").check()
    assert time.monotonic() - started < 2


def test_a_url_that_is_not_the_service_is_named_as_such(server):
    with pytest.raises(NotAClipService, match="404.*is .*/elsewhere a clip-service"):
        ClipClient(server.url + "/elsewhere").check()


@pytest.mark.parametrize("public", [(), ("/openapi.json", "/v1/models")])
def test_a_wrong_key_fails_at_once_and_the_right_one_is_sent_as_bearer(app, public):
    guarded = RequiresKey(app, "k" * 20)
    outer = lambda environ, start: (app if environ["PATH_INFO"] in public else guarded)(environ, start)  # noqa: E731
    recorder = Recorder(outer)
    with LiveServer(recorder) as live:
        with ClipClient(live.url, api_key="wrong-key") as clip:
            with pytest.raises(AuthenticationError, match="401.*a valid API key is required"):
                clip.embed_texts(["x"])
        assert len(recorder.calls) == (1 if not public else 2)  # no retry of a 401
        with ClipClient(live.url, api_key="k" * 20) as clip:
            assert clip.embed_texts(["x"]).ok.all()


def test_retry_after_is_read_as_seconds_or_an_http_date_and_anything_else_means_backoff():
    def wait(retry_after: str | None) -> float:
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        return policy.wait(HTTPResponse(status=503, headers=headers))

    policy = RetryPolicy.make(backoff=0.2).increment("POST", "/embed/text", error=ReadTimeoutError(None, "/", "slow"))
    assert 3.0 <= wait("3") <= 3.3  # plus up to 10% so clients told the same do not return together
    assert wait("0") == 0.0
    in_ten_seconds = email.utils.formatdate(time.time() + 10.5, usegmt=True)
    assert 9.0 <= wait(in_ten_seconds) <= 11.6
    for absent_or_unreadable in (None, "soon", "1.5"):  # delay-seconds is whole digits only
        assert 0.1 <= wait(absent_or_unreadable) <= 0.2  # the first retry's backoff: half to all of 0.2 s


# --- limits ------------------------------------------------------------------------------------------

def test_limits_are_read_from_a_list_or_one_branch(app):
    doc = app.test_client().get("/openapi.json").get_json()
    limits = Limits.from_openapi(doc)
    assert (limits.max_texts, limits.max_urls, limits.max_text_chars) == (256, 64, 10_000)
    # A "one item or a list" field (as /classify's inputs) keeps maxItems on its array branch.
    doc["paths"]["/classify"] = {"post": {"requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"inputs": {"oneOf": [{"type": "string"},
                                                              {"type": "array", "maxItems": 16}]}}}}}}}}
    assert Limits.from_openapi(doc).max_classify_inputs == 16
    with pytest.raises(NotAClipService):
        Limits.from_openapi({"paths": {}})


# --- classification (once the service has /classify) ------------------------------------------------

def test_classify_gives_the_services_scores(server, client, image_server):
    labels = ["a cat", "a cup of coffee", "a camera"]
    urls = [image_server.url("/chelsea_0.jpg"), image_server.url("/missing.png"), image_server.url("/coffee_0.jpg")]
    with ClipClient(server.url) as clip:
        result = clip.classify(urls, labels)
    answer = client.post("/classify", json={"inputs": urls, "parameters": {"candidate_labels": labels}}).get_json()
    assert [(e.index, e.code) for e in result.errors] == [(1, "upstream_status")]
    for i in (0, 2):
        ranked = result.ranked(i)
        assert [label for label, _ in ranked] == [r["label"] for r in answer["results"][i]]
        assert [score for _, score in ranked] == pytest.approx([r["score"] for r in answer["results"][i]], abs=1e-6)  # float32 arrays
    assert result.ranked(1) == []


# --- a client machine has no torch -------------------------------------------------------------------

WITHOUT_SERVER_PACKAGES = r"""
import importlib.abc, json, sys

BLOCKED = ("torch", "torchvision", "open_clip", "flask", "flask_smorest", "werkzeug", "marshmallow", "PIL")


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, Block())
from clip_service.client import ClipClient

with ClipClient(sys.argv[1]) as clip:
    texts = clip.embed_texts(["a photo of a cat", "a cup of coffee"])
    images = clip.embed_images([sys.argv[2], sys.argv[3], "/no/such/file.jpg"])
print(json.dumps({"texts": texts.vectors.tolist(), "images": images.vectors[:2].tolist(),
                  "errors": [e.code for e in images.errors],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_the_client_works_where_torch_flask_open_clip_and_pil_cannot_be_imported(server, client, image_server):
    done = subprocess.run([sys.executable, "-c", WITHOUT_SERVER_PACKAGES, server.url,
                           str(FIXTURES / "camera.png"), image_server.url("/coffee_0.jpg")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["loaded"] == [] and answer["errors"] == ["unreadable_file"]
    np.testing.assert_allclose(answer["texts"], service_vectors(
        client, "/embed/text", "texts", ["a photo of a cat", "a cup of coffee"]), atol=1e-6)
    np.testing.assert_allclose(answer["images"], service_vectors(
        client, "/embed/image", "urls", [image_server.url("/camera.png"), image_server.url("/coffee_0.jpg")]),
        atol=1e-6)
