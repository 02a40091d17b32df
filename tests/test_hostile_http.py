"""Hostile HTTP (issue #29): malformed framing, strict probes, secrets in URLs, and Gunicorn's private names.

Two real Gunicorns on the tiny model, one worker each: the service as it runs
(``BufferingWorker``), and the fallback the docs name, Gunicorn's own gthread
worker (``GUNICORN_CMD_ARGS="--worker-class gthread"``) with the service's JSON
logger, both at ``LOG_LEVEL=DEBUG`` so that every line Gunicorn can write is
written. Stock Gunicorn is the reference: each malformed request gets the status
Gunicorn gives it, within 2 s although the header timeout is 10 s, in the
service's envelope, with one access line.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import socket
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gunicorn
import pytest
from gunicorn import glogging
from gunicorn.http import errors as gunicorn_errors
from gunicorn.workers.base import Worker

from clip_service.ops import gunicorn_private
from clip_service.ops.gunicorn_logs import JsonGunicornLogger, status_code
from clip_service.ops.logs import redact_query, scrub_queries
from clip_service.ops.worker import BufferingWorker

from .helpers import assert_envelope
from .support.gunicorn import ROOT, GunicornProcess, log_records

BODY_LIMIT = 100_000
WITHIN = 2.0  # seconds: "at once", where waiting for more bytes would take the 10 s header timeout
SECRET = f"zq{uuid.uuid4().hex[:12]}"  # unique to this run: it must appear in no log line
FALLBACK = 'GUNICORN_CMD_ARGS="--worker-class gthread"'

# Framing and heads that Gunicorn's parser refuses with 400 (items 2, 3 and 4 of the issue).
MALFORMED = {
    "content-length-and-chunked": b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-content-lengths": b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "content-length-minus-1": b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "content-length-plus-19": b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Length: +19\r\n\r\n",
    "chunked-then-gzip": b"POST /embed/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "two-hosts": b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "bare-lf-everywhere": b"GET /health HTTP/1.1\nHost: x\n\n",
    "bare-lf-after-a-header": b"GET /health HTTP/1.1\r\nHost: x\n\r\n",
    "probe-http-9.9": b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n",
    "probe-header-without-colon": b"GET /health/live HTTP/1.1\r\nHost x\r\n\r\n",
    "probe-nul-in-a-header": b"GET /health/live HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
}
# Those Gunicorn refuses after reading the request line, so that even its own worker logs them.
LOGGED_BY_STOCK = {"content-length-and-chunked", "two-content-lengths", "content-length-minus-1",
                   "content-length-plus-19", "chunked-then-gzip", "two-hosts"}

CHUNKED_HEAD = (b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def chunks(data: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size))


def start(tiny_model_dir, log_path: Path, env: dict[str, str] | None = None) -> GunicornProcess:
    process = GunicornProcess({
        "CLIP_MODEL": f"local-dir:{tiny_model_dir}",
        "CLIP_PRETRAINED": str(tiny_model_dir / "open_clip_pytorch_model.bin"),
        "CLIP_WORKERS": "1", "CLIP_THREADS": "2", "CLIP_MAX_BODY_BYTES": str(BODY_LIMIT),
        "CLIP_HEADER_TIMEOUT": "10", "LOG_LEVEL": "DEBUG", **(env or {}),
    }, log_path)
    try:
        process.wait_healthy(timeout=90)
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def service(tiny_model_dir, tmp_path_factory):
    process = start(tiny_model_dir, tmp_path_factory.mktemp("hostile") / "service.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fallback(tiny_model_dir, tmp_path_factory):
    process = start(tiny_model_dir, tmp_path_factory.mktemp("hostile") / "fallback.log",
                    {"GUNICORN_CMD_ARGS": "--worker-class gthread"})
    assert "Using worker: gthread" in process.output()
    yield process
    process.stop()


def exchange(server, data: bytes, timeout: float = 15) -> tuple[float, bytes]:
    """Send ``data`` on a new connection and read until the server closes it: (seconds taken, answer)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        answer = b""
        while len(answer) < 1_000_000 and time.monotonic() - started < timeout:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            answer += piece
        return time.monotonic() - started, answer


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(match.group(1)) if match else None


def body_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def access_lines(server) -> list[dict]:
    return [r for r in log_records(server.output()) if r.get("logger") == "gunicorn.access"]


def new_access_lines(server, before: int) -> list[dict]:
    """The access lines written since there were ``before`` (a thread may log just after answering)."""
    deadline = time.monotonic() + WITHIN
    while len(access_lines(server)) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a second line, if any, would be written by now
    return access_lines(server)[before:]


def errors_logged(server) -> list[dict]:
    return [r for r in log_records(server.output()) if r.get("severity") in ("ERROR", "CRITICAL")]


def assert_refused(server, data: bytes, status: int) -> dict:
    """``data`` gets ``status`` within WITHIN in the envelope, the connection closed, and one access line."""
    before = len(access_lines(server))
    took, answer = exchange(server, data)
    assert status_of(answer) == status and took < WITHIN, (took, answer[:300])
    assert b"\r\nConnection: close\r\n" in answer
    body = body_of(answer)
    assert set(body) == {"code", "status", "message", "errors"} and body["code"] == status and body["message"]
    (line,) = new_access_lines(server, before)
    assert line["httpRequest"]["status"] == status and line["httpRequest"]["remoteIp"] == "127.0.0.1"
    return body


# --- items 2, 3, 4: malformed framing and strict probes ------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_gunicorns_400_at_once_with_one_access_line(service, fallback, case):
    assert_refused(service, MALFORMED[case], 400)
    # Gunicorn's own worker gives the same status; with the service's logger it now writes that answer
    # (the logger used to raise on it) and the access line Gunicorn logs for it.
    before = len(access_lines(fallback))
    took, answer = exchange(fallback, MALFORMED[case])
    assert status_of(answer) == 400 and took < WITHIN, (took, answer[:300])
    assert len(new_access_lines(fallback, before)) == (case in LOGGED_BY_STOCK)
    assert not errors_logged(service) and not errors_logged(fallback)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_well_formed_liveness_probe_is_still_answered_by_the_event_loop(service):
    before = len(access_lines(service))
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 2)  # kept alive: both answered
        answer = b""
        while answer.count(b'"alive"') < 2:
            piece = sock.recv(65536)
            assert piece
            answer += piece
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2 and b"Connection: keep-alive" in answer
    took, answer = exchange(service, b"HEAD /health/live HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and b"Connection: close" in answer and took < WITHIN
    assert answer.endswith(b"\r\n\r\n")  # no body to a HEAD
    time.sleep(0.2)
    assert len(access_lines(service)) == before  # answered in the event loop, as documented: no access line


# --- item 1: chunked bodies ----------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("body", [
    chunks(b'{"texts": ["' + b"a" * BODY_LIMIT + b'"]}', 4096),  # the limit is crossed by a chunk of many
    b"%x\r\n" % (BODY_LIMIT + 1) + b"a" * 30_000,  # one chunk over the limit, its data coming
    b"4000000\r\n",  # nothing but a chunk-size line past the limit
], ids=["many-chunks", "one-large-chunk", "size-line-only"])
def test_a_chunked_body_over_the_limit_is_413_at_once(service, body):
    message = assert_refused(service, CHUNKED_HEAD + body, 413)["message"]
    assert message == f"the request body is larger than {BODY_LIMIT} bytes"  # as the app words it
    assert not errors_logged(service) and "Traceback" not in service.output()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_chunked_body_over_the_limit_is_413_under_gunicorns_own_worker_too(fallback):
    # The same answer from the app, once the whole body has arrived (Gunicorn's worker reads as the app asks).
    whole = CHUNKED_HEAD + chunks(b'{"texts": ["' + b"a" * BODY_LIMIT + b'"]}', 4096) + b"0\r\n\r\n"
    answer = exchange(fallback, whole)[1]
    assert status_of(answer) == 413
    assert body_of(answer)["message"] == f"the request body is larger than {BODY_LIMIT} bytes"


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [
    b"zz\r\n{}\r\n0\r\n\r\n",  # not a chunk size
    b"2\r\n{}XX0\r\n\r\n",  # no CRLF after the data
    b"2;=\r\n{}\r\n0\r\n\r\n",  # a chunk extension without a name
    b"2\r\n{}\r\n0\r\nHost: y\r\n\r\n",  # a trailer that may not be one
], ids=["bad-size", "bad-terminator", "bad-extension", "forbidden-trailer"])
def test_a_malformed_chunked_body_is_400_not_an_error_inside_the_app(service, body):
    assert_refused(service, CHUNKED_HEAD + body, 400)
    assert not errors_logged(service) and "Traceback" not in service.output()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_chunked_body_within_the_limit_is_served_and_the_connection_kept(service):
    text = json.dumps({"texts": ["a photo of a cat"]}).encode()
    request = CHUNKED_HEAD + chunks(text, 7)[:-2] + b"\r\n" + b"0\r\nX-Checksum: 1\r\n\r\n"
    request = request.replace(b"7\r\n", b"7;ext=1\r\n", 1)  # an extension, and trailers: both allowed
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(request + b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b'"alive"' not in answer:
            piece = sock.recv(65536)
            assert piece, answer
            answer += piece
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"embeddings"' in answer


# --- item 7: no query value in any log line ---------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["service", "fallback"])
def test_no_query_value_reaches_any_log_line(which, request):
    server = request.getfixturevalue(which)
    text = json.dumps({"texts": ["a cat"]}).encode()
    sent = [
        b"GET /health?Bearer=%s1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /embed/text?k=%s2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text.replace(b"%", b"%%"),
        b"GET /nowhere?%s3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/models?api_key=%s4&size=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /embed/text?token=%s5\r\nHost: x\r\n\r\n",  # malformed: Gunicorn's warning copies the line
        b"GET /x?k=%s6\x01 HTTP/1.1\r\nHost: x\r\n\r\n",  # a control byte: the whole line again
        b"GET /health/live?%s7 HTTP/1.1\r\nHost x\r\n\r\n",  # a probe refused for its header
    ]
    statuses = [status_of(exchange(server, template % SECRET.encode())[1]) for template in sent]
    assert statuses[:4] == [200, 200, 404, 200] and set(statuses[4:]) == {400}
    time.sleep(0.3)
    log = server.output()
    assert SECRET not in log
    urls = {r["httpRequest"]["requestUrl"] for r in log_records(log) if r.get("logger") == "gunicorn.access"}
    assert {"/health?Bearer=REDACTED", "/embed/text?k=REDACTED", "/nowhere?REDACTED",
            "/v1/models?api_key=REDACTED&size=REDACTED"} <= urls
    if which == "fallback":  # Gunicorn's own warning, query reduced to its names
        assert "Invalid HTTP request line: 'GET /embed/text?token=REDACTED'" in log


def test_queries_are_reduced_to_their_parameter_names():
    assert redact_query(f"api_key={SECRET}&size=2&{SECRET}&&x=") == \
        "api_key=REDACTED&size=REDACTED&REDACTED&&x=REDACTED"
    line = f"Invalid HTTP request line: 'GET /a?Bearer={SECRET} HTTP/1.1 x' from http://h/p?{SECRET}."
    assert scrub_queries(line) == "Invalid HTTP request line: 'GET /a?Bearer=REDACTED HTTP/1.1 x' from " \
                                  "http://h/p?REDACTED"
    assert scrub_queries("what? nothing to hide here?") == "what? nothing to hide here?"


def test_the_access_line_of_gunicorns_own_error_answer_has_its_status():
    # Gunicorn's handle_error sets only resp.status ("400 Bad Request"): the logger raised on status_code,
    # and Gunicorn, which logs before it answers, then answered nothing.
    assert status_code(SimpleNamespace(status="400 Bad Request")) == 400
    assert status_code(SimpleNamespace(status_code=201, status="201 Created")) == 201
    assert status_code(SimpleNamespace(status=None)) is None


# --- item 12: Gunicorn's private names --------------------------------------------------------------

def test_every_private_name_the_worker_relies_on_is_in_the_pinned_gunicorn():
    pinned = re.search(r"^gunicorn==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert gunicorn.__version__ == gunicorn_private.PINNED == pinned
    assert gunicorn_private.problems() == []


def test_the_worker_takes_gunicorn_only_through_the_checked_module():
    tree = ast.parse(inspect.getsource(inspect.getmodule(BufferingWorker)))
    imported = [node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names]
    assert not [name for name in imported if name and name.split(".")[0] == "gunicorn"]


def test_every_gunicorn_method_the_worker_overrides_is_listed_with_its_signature():
    base = gunicorn_private.ThreadWorker
    for name, value in vars(BufferingWorker).items():
        owner = next((cls for cls in base.__mro__ if name in vars(cls)), None)
        if owner is None or name == "__init__" or not callable(getattr(base, name)):
            continue
        listed = f"{owner.__module__}.{owner.__qualname__}.{name}"
        assert listed in gunicorn_private.SIGNATURES, listed
        assert gunicorn_private.signature(getattr(BufferingWorker, name)) == gunicorn_private.SIGNATURES[listed]


def _parse_errors():
    """One instance of each error Gunicorn's HTTP parser raises, made with SECRET as what was received."""
    for error in vars(gunicorn_errors).values():
        if isinstance(error, type) and issubclass(error, gunicorn_errors.ParseException):
            try:
                required = [p for p in inspect.signature(error).parameters.values()
                            if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
            except ValueError:  # Exception's own __init__: no arguments needed
                required = []
            yield error(*[SECRET] * len(required))


@pytest.mark.parametrize("error", list(_parse_errors()), ids=lambda e: type(e).__name__)
def test_each_parser_error_gets_the_status_gunicorn_gives_it(error):
    quiet = SimpleNamespace(warning=lambda *a, **k: None, exception=lambda *a, **k: None,
                            debug=lambda *a, **k: None, access=lambda *a, **k: None)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        Worker.handle_error(SimpleNamespace(log=quiet, cfg=None), None, ours, ("127.0.0.1", 1), error)
        answer = theirs.recv(65536)
    status, reason = gunicorn_private.refusal(error)
    assert status == status_of(answer)
    assert SECRET not in reason and reason  # Gunicorn's wording, without what the client sent


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("change, named", [
    ("del gthread.STOP_KEEPALIVE_LINGER", "no gunicorn.workers.gthread.STOP_KEEPALIVE_LINGER"),
    ("gthread.ThreadWorker.murder_keepalived = lambda self: None",
     "gunicorn.workers.gthread.ThreadWorker.murder_keepalived takes (self), not (self, force=False)"),
], ids=["a-name-gone", "a-signature-changed"])
def test_a_gunicorn_without_them_refuses_to_start_in_one_line(tiny_model_dir, tmp_path, change, named):
    # sitecustomize runs in the Gunicorn process before anything else: a Gunicorn as a release might change it.
    (tmp_path / "sitecustomize.py").write_text(f"import gunicorn.workers.gthread as gthread\n{change}\n")
    server = GunicornProcess({"CLIP_MODEL": f"local-dir:{tiny_model_dir}", "PYTHONPATH": str(tmp_path)},
                             tmp_path / "gunicorn.log")
    try:
        status = server.proc.wait(timeout=90)
    finally:
        server.stop()
    output = server.output()
    last = output.strip().splitlines()[-1]
    assert status == 78, output[-2000:]
    assert last.startswith("clip-service cannot start: ") and named in last
    assert f"Gunicorn {gunicorn.__version__} differs" in last and FALLBACK in last
    assert "Traceback" not in output


def test_the_json_logger_keeps_gunicorns_access_signature():
    assert inspect.signature(JsonGunicornLogger.access) == inspect.signature(glogging.Logger.access)
