"""The app behind a real HTTP server on 127.0.0.1, and WSGI wrappers that make it slow, flaky or locked."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from typing import Callable

from werkzeug.serving import make_server


class LiveServer:
    """Serve a WSGI ``app`` with werkzeug's threaded server (HTTP/1.1 keep-alive); count accepted connections."""

    def __init__(self, app, port: int = 0):
        self.connections = 0
        self._http = make_server("127.0.0.1", port, app, threaded=True)
        accept = self._http.get_request

        def counting_accept():
            request = accept()
            self.connections += 1
            return request

        self._http.get_request = counting_accept
        self.url = f"http://127.0.0.1:{self._http.server_port}"
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


def _json(start_response, status: str, body: dict, headers: list[tuple[str, str]] = ()) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


class Recorder:
    """Record (method, path, items in the JSON body's list fields, monotonic time) of every request."""

    def __init__(self, app):
        self.app = app
        self.calls: list[tuple[str, str, int, float]] = []
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        items = 0
        if environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            try:
                items = sum(len(v) for v in json.loads(body).values() if isinstance(v, list))
            except ValueError:
                pass
            environ["wsgi.input"] = io.BytesIO(body)
        with self._lock:
            self.calls.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], items, time.monotonic()))
        return self.app(environ, start_response)

    def posts(self, path: str) -> list[tuple[str, str, int, float]]:
        return [c for c in self.calls if c[0] == "POST" and c[1] == path]


class Flaky:
    """Answer the first ``failures`` POSTs with ``status`` (and ``headers``), then pass requests through."""

    def __init__(self, app, failures: int, status: int = 503, headers: list[tuple[str, str]] = ()):
        self.app, self.failures, self.status, self.headers = app, failures, status, list(headers)
        self.refused = 0

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST" and self.refused < self.failures:
            self.refused += 1
            phrase = {429: "Too Many Requests", 503: "Service Unavailable"}.get(self.status, "Error")
            return _json(start_response, f"{self.status} {phrase}",
                         {"code": self.status, "status": phrase, "message": "busy", "errors": {}}, self.headers)
        return self.app(environ, start_response)


class RequiresKey:
    """Refuse requests without ``Authorization: Bearer <key>`` with 401 in the service's error envelope.

    A stand-in for the service's own API keys (issue #12) where the app has none.
    """

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    def __call__(self, environ, start_response):
        if environ.get("HTTP_AUTHORIZATION") != f"Bearer {self.key}":
            return _json(start_response, "401 Unauthorized",
                         {"code": 401, "status": "Unauthorized", "message": "a valid API key is required",
                          "errors": {}}, [("WWW-Authenticate", "Bearer")])
        return self.app(environ, start_response)


class Slow:
    """Wait ``seconds`` before each POST, so a run lasts long enough to be interrupted.

    With ``hold``, the POSTs after the first ``hold_after`` also wait for that
    event (30 s at most), so a run cannot finish before the test has stopped it,
    however slowly the test itself gets scheduled.
    """

    def __init__(self, app, seconds: float, hold: threading.Event | None = None, hold_after: int = 0):
        self.app, self.seconds, self.hold, self.hold_after = app, seconds, hold, hold_after
        self._posts = itertools.count(1)

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            time.sleep(self.seconds)
            if self.hold is not None and next(self._posts) > self.hold_after:
                self.hold.wait(30)
        return self.app(environ, start_response)


def wrap(app, *wrappers: Callable) -> Callable:
    """``app`` inside each wrapper in turn (the last one outermost)."""
    for wrapper in wrappers:
        app = wrapper(app)
    return app
