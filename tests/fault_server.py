"""Hostile HTTP behaviour for ImageServer routes, and a canary that counts connections.

Each factory returns a route handler for ``ImageServer.routes[path]``; the
handler gets the ``BaseHTTPRequestHandler`` after the request line and headers
were read. Everything listens on loopback only.
"""

from __future__ import annotations

import gzip
import select
import socket
import struct
import threading
import time
import zlib


def _head(h, status: int = 200, headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.flush()


def serve(body: bytes, content_type: str = "application/octet-stream", status: int = 200,
          **extra_headers: str):
    """Answer ``body`` with a correct Content-Length."""
    def handler(h):
        _head(h, status, {"Content-Type": content_type, "Content-Length": str(len(body)),
                          **{k.replace("_", "-"): v for k, v in extra_headers.items()}})
        h.wfile.write(body)
    return handler


def hang(seconds: float):
    """Read the request, then say nothing (until the test ends or ``seconds`` pass)."""
    def handler(h):
        time.sleep(seconds)
        h.close_connection = True
    return handler


def trickle_body(body: bytes, interval: float):
    """Send correct headers, then the body one byte every ``interval`` seconds."""
    def handler(h):
        _head(h, 200, {"Content-Type": "image/png", "Content-Length": str(len(body))})
        try:
            for i in range(len(body)):
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
                time.sleep(interval)
        except OSError:  # the client gave up, as it should
            pass
        h.close_connection = True
    return handler


def trickle_headers(interval: float, count: int = 10_000):
    """Send an endless header block, one byte every ``interval`` seconds."""
    def handler(h):
        try:
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(count):
                h.wfile.write(b"a")
                h.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass
        h.close_connection = True
    return handler


def reset():
    """Abort the connection with a TCP RST instead of answering."""
    def handler(h):
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True
    return handler


def lying_length(body: bytes, declared: int, then_hang: float = 0.0):
    """Declare ``declared`` bytes, send ``body``, (optionally wait), then close."""
    def handler(h):
        _head(h, 200, {"Content-Type": "image/png", "Content-Length": str(declared)})
        try:
            h.wfile.write(body)
            h.wfile.flush()
            time.sleep(then_hang)
        except OSError:
            pass
        h.close_connection = True
    return handler


def endless(chunked: bool = True, stop: threading.Event | None = None, sent: list | None = None):
    """Send an endless body, chunked or delimited by the connection's end; count bytes in ``sent``."""
    block = b"\x89PNG" + b"\x00" * (64 * 1024 - 4)

    def handler(h):
        headers = {"Content-Type": "image/png"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Connection"] = "close"
        _head(h, 200, headers)
        total = 0
        try:
            while not (stop and stop.is_set()) and total < 2 * 1024 ** 3:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                total += len(block)
                if sent is not None:
                    sent.append(len(block))
        except OSError:
            pass
        h.close_connection = True
    return handler


def gzip_bomb(decoded_size: int):
    """A small gzip body that inflates to ``decoded_size`` zero bytes."""
    body = gzip.compress(b"\x00" * decoded_size, compresslevel=9)

    def handler(h):
        _head(h, 200, {"Content-Type": "image/png", "Content-Encoding": "gzip",
                       "Content-Length": str(len(body))})
        h.wfile.write(body)
    return handler, len(body)


def redirect(location: str, status: int = 302):
    def handler(h):
        _head(h, status, {"Location": location, "Content-Length": "0"})
    return handler


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (it is never decoded that far)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


class CanaryServer:
    """A TCP listener on a loopback port that counts every connection made to it (and answers none)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self._sock.setblocking(False)
        self.host = host
        self.port = self._sock.getsockname()[1]
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def _take_waiting(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for a connection, then accept and count all that are waiting."""
        if not select.select([self._sock], [], [], wait)[0]:
            return
        with self._lock:
            while True:
                try:
                    conn, _ = self._sock.accept()
                except OSError:  # BlockingIOError: none left
                    return
                self._count += 1
                conn.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            self._take_waiting(0.01)

    @property
    def connections(self) -> int:
        """Connections so far, including any still waiting in the listen backlog."""
        # Count the backlog here rather than sleeping until the accept loop has run:
        # what the kernel completed is counted at once, however loaded the machine.
        self._take_waiting(0.02)
        with self._lock:  # the accept loop may be counting one it took from the backlog
            return self._count

    def __enter__(self) -> "CanaryServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
