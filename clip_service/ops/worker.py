"""A gthread worker whose event loop reads each request whole, so no thread ever waits on a client.

Works around Gunicorn's gthread worker handing a connection to a thread at its
first byte, the thread then blocking on the rest with no deadline
(benoitc/gunicorn#3518; its fix, #3519, only sets aside connections that send
nothing, after a thread has waited 5 s on each).

Here the event loop reads every request into memory under deadlines
(``CLIP_HEADER_TIMEOUT``, ``CLIP_BODY_MIN_RATE``; ``request_framing`` says when
a request is whole), and only then does a thread take it: Gunicorn's own parser
parses it from that buffer, never from the socket. The loop also bounds open
connections and buffered bodies, dropping the stalest waiting connection first,
answers ``GET /health/live`` itself with the app's own answer (taken once at
start; constant for the process), and runs ``/health`` and ``/health/ready`` on
threads of their own, so probes never queue behind requests.

Every error answer the worker writes itself (408, 413, 431, 503, and the 400s
of what Gunicorn's parser refuses) carries the service's envelope, built by
``web.errors``, and has one access line. What the worker takes from Gunicorn
beyond its API comes through ``gunicorn_private``, which checks it at import.
"""

from __future__ import annotations

import errno
import io
import resource
import selectors
import socket
import sys
import threading
import time
from collections import OrderedDict
from concurrent import futures
from datetime import timedelta
from functools import partial
from http import HTTPStatus
from types import SimpleNamespace

from werkzeug.test import Client

from ..startup import settings_or_exit
from ..web.errors import ApiError, envelope
from ..web.jsonio import dumps_bytes
from . import metrics
from .gunicorn_private import (
    SERVER,
    STOP_KEEPALIVE_LINGER,
    ChunkedReader,
    RequestParser,
    TConn,
    ThreadWorker,
    http_date,
    refusal,
)
from .request_framing import RequestScanner

LIVENESS = b"/health/live"  # answered by the event loop itself, so it answers whatever the threads do
PROBES = (b"/health", b"/health/ready")  # on threads of their own, so they never queue behind requests
PROBE_THREADS = 2  # a readiness probe may wait on the model for up to CLIP_READY_TIMEOUT
# Gunicorn's own limits allow ~800 KiB of headers; 64 KiB is more than any client of this API sends
# and bounds a flood's memory at CLIP_MAX_CONNECTIONS x 64 KiB per worker.
MAX_HEAD = 64 * 1024
_TICK = 0.25  # seconds between deadline sweeps: how late past its deadline a connection may close
_READ_SIZE, _BODY_READ_SIZE = 64 * 1024, 1024 * 1024  # the latter as Gunicorn's SocketUnreader
_FD_HEADROOM = 256  # descriptors left for the app's own files and image-fetch sockets
_LINGER_SECONDS, _LINGER_BYTES = 2.0, 64 * 1024  # as gunicorn.util.close_graceful
_RETRY = {"Retry-After": "1"}  # a 503 from a full worker: a second later there may be room


class _Conn(TConn):
    """A client connection and how far its current request has come."""

    def __init__(self, cfg, sock, client, server):
        super().__init__(cfg, sock, client, server)
        self.scanner: RequestScanner | None = None
        self.rest = b""  # bytes after the request in a thread: the start of the next one
        self.used = False
        self.idle_until = 0.0
        self.head_started: float | None = None
        self.body_started: float | None = None
        self.continued = False
        self.reserved = 0  # body bytes counted against CLIP_MAX_BUFFERED_BYTES
        self.linger_until: float | None = None  # closing: drain what the client still sends until then
        self.drained = 0
        self.watched = self.closed = False


def _error_answer(error: ApiError) -> bytes:
    """``error`` as a whole HTTP answer in the service's envelope (built by web.errors); the connection closes."""
    body = dumps_bytes(envelope(error))
    headers = b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
                       for name, value in error.headers.items())
    return (b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"%sContent-Length: %d\r\n\r\n%s" % (error.status, HTTPStatus(error.status).phrase.encode(),
                                                 SERVER.encode(), http_date().encode(), headers, len(body), body))


class BufferingWorker(ThreadWorker):
    """gthread, except that a thread only ever gets a request that has all arrived."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The settings the master read once (gunicorn.conf.py), not the environment again.
        settings = settings_or_exit()
        self.server, self.limits = settings.server, settings.limits
        self.max_conns = self.cfg.worker_connections
        # The base class stops accepting at worker_connections; this one drops its
        # stalest waiting connection instead, so a probe can always get in.
        self.worker_connections = sys.maxsize
        self.waiting: OrderedDict[_Conn, None] = OrderedDict()  # in the event loop, stalest first
        self.buffered = 0
        self.liveness: tuple[bytes, bytes, bytes] | None = None  # status, headers, body
        self.probe_pool: futures.ThreadPoolExecutor | None = None
        self._next_sweep = 0.0
        self._in_thread = threading.local()  # the connection a request thread serves, for handle_error

    @classmethod
    def check_config(cls, cfg, log):
        if cfg.is_ssl or cfg.http2_cleartext != "off":
            raise RuntimeError(f"{cls.__name__} serves plain HTTP/1.x: terminate TLS and HTTP/2 in front of it")

    def run(self):
        self._fit_descriptor_limit()
        # The app's own answer, once: its body and headers (less the per-request ones) are constant.
        response = Client(self.wsgi).get(LIVENESS.decode())
        headers = b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
                           for name, value in response.headers
                           if name.lower() not in ("content-length", "x-request-id"))
        self.liveness = (response.status.encode(), headers, response.get_data())
        self.probe_pool = futures.ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="probe")
        try:
            super().run()
        finally:
            self.probe_pool.shutdown(wait=False)

    def _fit_descriptor_limit(self):
        """Raise the descriptor limit to fit the connection cap, or lower the cap to fit the limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.max_conns + _FD_HEADROOM
        if soft == resource.RLIM_INFINITY or soft >= want:
            return
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if soft < want:
            self.max_conns = max(soft - _FD_HEADROOM, 16)
            self.log.warning("descriptor limit %d: at most %d connections per worker", soft, self.max_conns)

    # --- the event loop ----------------------------------------------------

    def accept(self, listener):
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._evict_stalest()  # out of descriptors: make room for the next one
            elif exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, sock, client, listener.getsockname())
        if self.nr_conns > self.max_conns and not self._evict_stalest():
            self._close(conn)  # every other connection is in a thread: refuse this one
            return
        self._wait_for_request(conn, b"")

    def _wait_for_request(self, conn: _Conn, data: bytes):
        conn.scanner = RequestScanner(MAX_HEAD, self.limits.max_body_bytes)
        conn.head_started = conn.body_started = None
        conn.continued = False
        idle = self.cfg.keepalive or self.server.header_timeout
        conn.idle_until = time.monotonic() + (idle if self.alive else min(idle, STOP_KEEPALIVE_LINGER))
        self._watch(conn)
        if data:  # pipelined: looked at from the loop, not from here, so a long pipeline cannot recurse
            conn.scanner.feed(data)
            self.method_queue.defer(self._advance, conn)

    def _on_readable(self, conn: _Conn, _sock):
        lingering = conn.linger_until is not None
        size = _READ_SIZE if lingering else min(_BODY_READ_SIZE, max(_READ_SIZE, conn.scanner.remaining()))
        try:
            data = conn.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # reset by the client
        if lingering:
            conn.drained += len(data)
            if not data or conn.drained > _LINGER_BYTES:
                self._close(conn)
        elif not data:
            self._close(conn)  # the client closed its side before finishing a request
        else:
            self.waiting.move_to_end(conn)
            conn.scanner.feed(data)
            self._advance(conn)

    def _advance(self, conn: _Conn):
        if not conn.watched or conn.linger_until is not None:
            return  # dropped meanwhile
        scan, now = conn.scanner, time.monotonic()
        if conn.head_started is None:
            conn.head_started = now
        if scan.too_large:
            self._drop(conn, "head_too_large", 431, f"the request head is larger than {MAX_HEAD} bytes")
            return
        if scan.head_end is None:
            if scan.ready:
                self._dispatch(conn)  # handed over before its head ended (a bare LF): Gunicorn refuses it at once
            return
        if conn.body_started is None:
            conn.body_started = now
        if scan.body_too_large:
            # A chunked body over the limit: 413 from its size line, as the app answers a Content-Length one.
            self._refuse(conn, ApiError(413, f"the request body is larger than {self.limits.max_body_bytes} bytes"))
            self._linger(conn)
            return
        if scan.body_bytes > conn.reserved and not self._reserve(conn, scan.body_bytes - conn.reserved):
            return
        if scan.ready:
            self._dispatch(conn)
        elif scan.expects_continue and not conn.continued:
            conn.continued = True  # only once the body has room
            self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")

    def _dispatch(self, conn: _Conn):
        """Give a request that has all arrived to a thread, or answer a liveness probe right here."""
        self._unwatch(conn)
        scan = conn.scanner
        liveness = scan.path == LIVENESS and scan.method in (b"GET", b"HEAD") and not scan.body_received()
        request, conn.rest = scan.take()
        conn.used = True
        if liveness and not scan.truncated:
            probe = self._parse_probe(request, conn)
            if probe is not None:
                self._answer(conn, probe, *self.liveness)
                return
            # Refused by Gunicorn's parser: a probe thread answers it as Gunicorn would any request.
        conn.parser = RequestParser(self.cfg, _pieces(request), conn.client)  # this buffer, never the socket
        conn.data_ready = True  # the base class must not wait for the socket to be readable
        pool = self.probe_pool if scan.path in PROBES or liveness else self.tpool
        future = pool.submit(self._serve, conn)
        future.add_done_callback(partial(self._thread_done, conn))

    def _parse_probe(self, request: bytearray, conn: _Conn):
        """The liveness probe as Gunicorn's own parser reads it, or None where it refuses the request."""
        try:
            return next(RequestParser(self.cfg, [bytes(request)], conn.client))
        except Exception:  # any refusal: the thread's parse raises it again and answers it
            return None

    def _serve(self, conn: _Conn):
        """Gunicorn's handling of ``conn``'s request, in a request thread."""
        self._in_thread.conn = conn
        try:
            return self.handle(conn)
        finally:
            self._in_thread.conn = None

    def _thread_done(self, conn: _Conn, future):
        self.method_queue.defer(self.finish_request, conn, future)

    def _answer(self, conn: _Conn, req, status: bytes, headers: bytes, body: bytes):
        """Answer ``req``, a request Gunicorn's parser accepted, with the app's constant liveness answer."""
        metrics.REQUESTS.labels(LIVENESS.decode(), status.split(b" ", 1)[0].decode()).inc()
        close = req.should_close() or not self.alive
        head = b"HTTP/%d.%d %s\r\nServer: %s\r\nDate: %s\r\nConnection: %s\r\n%sContent-Length: %d\r\n\r\n" % (
            *req.version, status, SERVER.encode(), http_date().encode(), b"close" if close else b"keep-alive",
            headers, len(body))
        if self._send(conn, head + (b"" if req.method == "HEAD" else body)) and not close:
            self._wait_for_request(conn, conn.rest)
        else:
            self._linger(conn)

    def finish_request(self, conn: _Conn, fs):
        """A thread is done with ``conn`` (runs in the event loop): wait for its next request, or close."""
        self._release(conn)
        try:
            keep = bool(fs.result())
        except Exception:  # an error the thread did not catch
            keep = False
        try:
            conn.sock.setblocking(False)
        except OSError:  # the thread closed the socket itself
            keep = False
        # Bytes Gunicorn left unread mean it framed the request otherwise than we did: do not guess.
        keep = keep and not conn.scanner.truncated and not conn.parser.unreader.read()
        conn.parser = None  # it holds the request's bytes, which no longer count against the budget
        if keep:
            self._wait_for_request(conn, conn.rest)
        else:
            self._linger(conn)

    def handle_request(self, req, conn):
        # The event loop read the whole body, sending any 100 Continue itself.
        req._expected_100_continue = False
        if isinstance(req.body.reader, ChunkedReader):
            # Decoded before the app runs: a framing error Gunicorn finds (a bad chunk size or extension, a
            # missing CRLF) is then refused with 400 by handle_error, not raised inside the app as a 500.
            req.body = io.BytesIO(req.body.read())
        return super().handle_request(req, conn)

    def handle_error(self, req, client, addr, exc):
        """Answer what Gunicorn refused with its status, in the envelope; log the reason, never the request."""
        conn = getattr(self._in_thread, "conn", None)
        if conn is None or conn.sock is not client:
            super().handle_error(req, client, addr, exc)  # not a request of ours
            return
        status, reason = refusal(exc)
        if status >= 500:
            self.log.exception("error handling a request to %s", (conn.scanner.path or b"?").decode("latin-1"))
        else:
            # Gunicorn's own warning copies the request line or header it refused: secrets included.
            self.log.warning("refused a request from %s: %s (%d)", _peer(addr), reason, status)
        self._refuse(conn, ApiError(status, reason))

    def wait_for_and_dispatch_events(self, timeout):
        super().wait_for_and_dispatch_events(min(timeout, _TICK))

    def murder_keepalived(self, force=False):
        """Close the waiting connections that are past their deadline (all of them when forced)."""
        now = time.monotonic()
        if now < self._next_sweep and not force:
            return
        self._next_sweep = now + _TICK
        for conn in list(self.waiting):
            if force:
                self._close(conn)
            elif now >= self._deadline(conn):
                self._expire(conn)

    def _cap_keepalive(self, deadline):
        for conn in self.waiting:
            conn.idle_until = min(conn.idle_until, deadline)

    def _deadline(self, conn: _Conn) -> float:
        if conn.linger_until is not None:
            return conn.linger_until
        if conn.head_started is None:
            return conn.idle_until
        if conn.body_started is None:
            return conn.head_started + self.server.header_timeout
        # A head start, then a minimum average rate: each byte received buys 1/rate seconds.
        return (conn.body_started + self.server.header_timeout
                + conn.scanner.body_received() / self.server.body_min_rate)

    def _expire(self, conn: _Conn):
        if conn.linger_until is None and conn.head_started is None and not conn.used:
            metrics.CONNECTIONS_DROPPED.labels("silent").inc()
        if conn.linger_until is not None or conn.head_started is None:
            self._close(conn)  # idle, as Gunicorn's keep-alive timeout would
        elif conn.body_started is None:
            self._drop(conn, "head_timeout", 408,
                       f"the request head did not arrive within {self.server.header_timeout:g} s")
        else:
            self._drop(conn, "body_timeout", 408,
                       f"the request body arrived slower than {self.server.body_min_rate} bytes/s")

    # --- limits ------------------------------------------------------------

    def _evict_stalest(self, holding_body: bool = False, sparing: _Conn | None = None) -> bool:
        """Drop the waiting connection quiet for longest (one holding body bytes, if asked)."""
        for conn in self.waiting:
            if conn is not sparing and (conn.reserved or not holding_body):
                if conn.linger_until is not None:
                    self._close(conn)  # closing anyway
                elif conn.head_started is None:
                    metrics.CONNECTIONS_DROPPED.labels("evicted").inc()
                    self._close(conn)  # nothing to answer
                else:
                    self._drop(conn, "evicted", 503, "the server is full; retry shortly", _RETRY, linger=False)
                return True
        return False

    def _reserve(self, conn: _Conn, nbytes: int) -> bool:
        """Count body bytes against the buffer budget, dropping the stalest arriving bodies to make room."""
        while self.buffered + nbytes > self.server.max_buffered_bytes:
            if not self._evict_stalest(holding_body=True, sparing=conn):
                self._drop(conn, "evicted", 503, "the server is full; retry shortly", _RETRY, linger=False)
                return False
        self.buffered += nbytes
        conn.reserved += nbytes
        return True

    def _release(self, conn: _Conn):
        self.buffered -= conn.reserved
        conn.reserved = 0

    # --- closing -----------------------------------------------------------

    def _drop(self, conn: _Conn, reason: str, status: int, message: str, headers: dict | None = None,
              linger: bool = True):
        """Close a connection whose request has not all arrived: count it, log it once, answer it."""
        metrics.CONNECTIONS_DROPPED.labels(reason).inc()
        scan = conn.scanner
        self.log.warning("closed connection from %s: %s (%d of its bytes received, %s stage)",
                         _peer(conn.client), message, len(scan.buf),
                         "head" if scan.head_end is None else "body")
        self._refuse(conn, ApiError(status, message, headers=headers))
        if linger:
            self._linger(conn)
        else:
            self._close(conn)

    def _refuse(self, conn: _Conn, error: ApiError):
        """Write ``error`` as the answer to ``conn``'s request, and its one access line (event loop or thread)."""
        answer = _error_answer(error)
        sent = len(answer) if self._send(conn, answer) else 0
        scan = conn.scanner
        method, path, protocol = (part.decode("latin-1") for part in (scan.method, scan.path, scan.version))
        host, port = conn.client[:2] if isinstance(conn.client, tuple) else ("", "")  # IPv6: 4 items
        # What Gunicorn's loggers read of a request, its answer and its environ (no query: it is never logged).
        environ = {"REQUEST_METHOD": method, "RAW_URI": path, "PATH_INFO": path, "QUERY_STRING": "",
                   "SERVER_PROTOCOL": protocol, "REMOTE_ADDR": str(host), "REMOTE_PORT": str(port)}
        resp = SimpleNamespace(status=f"{error.status} {HTTPStatus(error.status).phrase}", status_code=error.status,
                               headers=[], sent=sent)
        request = SimpleNamespace(method=method, path=path, query="", headers=[])
        took = time.monotonic() - (conn.head_started or time.monotonic())
        self.log.access(resp, request, environ, timedelta(seconds=took))

    def _send(self, conn: _Conn, data: bytes) -> bool:
        try:
            return conn.sock.send(data) == len(data)
        except OSError:
            return False

    def _linger(self, conn: _Conn):
        """Half-close, then read and discard what the client still sends, so no reset destroys our answer."""
        self._release(conn)
        conn.scanner = None  # what arrived of the request is not needed any more
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.linger_until = time.monotonic() + _LINGER_SECONDS
        self._watch(conn)

    def _close(self, conn: _Conn):
        if conn.closed:
            return
        conn.closed = True
        self._unwatch(conn)
        self._release(conn)
        self.nr_conns -= 1
        conn.close()

    def _watch(self, conn: _Conn):
        if not conn.watched:
            conn.watched = True
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        self.waiting[conn] = None
        self.waiting.move_to_end(conn)

    def _unwatch(self, conn: _Conn):
        self.waiting.pop(conn, None)
        if conn.watched:
            conn.watched = False
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass


def _pieces(request: bytearray, size: int = _BODY_READ_SIZE):
    """The request in pieces no bigger than a socket read of Gunicorn's: its unreader copies
    whatever it holds on every read, so one 32 MiB piece would be copied hundreds of times."""
    with memoryview(request) as view:
        for start in range(0, len(request), size):
            yield bytes(view[start:start + size])


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if isinstance(client, tuple) and len(client) >= 2 else str(client or "unix")
