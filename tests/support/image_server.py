"""A real HTTP server on 127.0.0.1 that serves images: routes set by a test (which may misbehave), or a folder."""

from __future__ import annotations

import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import unquote


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
        path = self.path.split("?")[0]
        route = server.routes.get(path) or server.file_route(path)
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
    """Serve ``routes`` (path -> (content type, bytes) or a handler function) on a free port.

    With ``directory``, a path that is no route is a file under it (the benchmarks' photos).
    """

    def __init__(self, host: str = "127.0.0.1", ssl_context=None, directory: Path | None = None):
        self.routes: dict[str, tuple[str, bytes] | Callable] = {}
        self.directory = Path(directory).resolve() if directory is not None else None
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []  # the request headers, in the order of ``requests``
        self.connections = 0
        self._lock = threading.Lock()
        owner = self

        class _Server(ThreadingHTTPServer):
            daemon_threads = True
            # socketserver's backlog of 5 drops concurrent connects, and each dropped SYN costs the
            # client a 1 s retransmit: a benchmark's 8 clients of 16 URLs each would wait on it.
            request_queue_size = 256

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

    def file_route(self, path: str) -> tuple[str, bytes] | None:
        """(content type, bytes) of the file ``path`` names under ``directory``, or None."""
        if self.directory is None:
            return None
        target = (self.directory / unquote(path).lstrip("/")).resolve()
        if self.directory not in target.parents or not target.is_file():
            return None  # outside the folder (../), or no such file
        return mimetypes.guess_type(target.name)[0] or "application/octet-stream", target.read_bytes()

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

    def start(self) -> "ImageServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
