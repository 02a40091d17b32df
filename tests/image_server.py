"""A real HTTP server on 127.0.0.1 that serves test images (and, for fault tests, misbehaves)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def send_body(handler: BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
    """Answer 200 with ``body``; for route functions that do something first (wait, count)."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        server: ImageServer = self.server.owner
        server.record(self.path, dict(self.headers))
        route = server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if callable(route):
            route(self)
            return
        content_type, body = route
        send_body(self, body, content_type)

    def log_message(self, *args):  # keep test output quiet
        pass


class ImageServer:
    """Serve ``routes`` (path -> (content type, bytes) or a handler function) on a free port."""

    def __init__(self, host: str = "127.0.0.1", ssl_context=None):
        self.routes: dict[str, tuple[str, bytes] | Callable] = {}
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []  # the request headers, in the order of ``requests``
        self.connections = 0
        self._lock = threading.Lock()
        owner = self

        class _Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address):
                with owner._lock:
                    owner.connections += 1
                return True

            def get_request(self):
                sock, address = super().get_request()
                if ssl_context is not None:  # HTTPS: the TLS handshake runs in the handler's thread
                    sock = ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, address

            def finish_request(self, request, client_address):
                if ssl_context is not None:
                    try:
                        request.do_handshake()
                    except OSError:
                        return
                super().finish_request(request, client_address)

        self._httpd = _Server((host, 0), _Handler)
        self._httpd.owner = self
        self.host = host
        self.port = self._httpd.server_address[1]
        self.scheme = "https" if ssl_context is not None else "http"
        # shutdown() waits for the next poll: a short interval keeps per-test servers cheap to stop.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True)

    def record(self, path: str, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self.requests.append(path)
            self.headers.append(headers or {})

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def reset(self, routes: dict[str, tuple[str, bytes] | Callable]) -> None:
        """Serve exactly ``routes`` from now on, with empty request logs: a fresh server for the next test."""
        with self._lock:
            self.routes = dict(routes)
            self.requests = []
            self.headers = []
            self.connections = 0

    def add(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.routes[path] = (content_type, body)
        return self.url(path)

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
