"""One HTTP GET to an address the URL policy already checked, every socket operation under a deadline.

Network only: no policy decisions, no decoding. The connection goes to one of
the given, already checked IP addresses (never to the name again, so DNS
rebinding cannot redirect it); TLS still sends SNI and verifies the
certificate for the name. Every failure is an ``ItemError``.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from contextlib import contextmanager
from http.client import HTTPException
from typing import Iterator, Sequence

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_ import create_urllib3_context

from .errors import ItemError
from .url_policy import IPAddress, Target

_CHUNK = 64 * 1024

# --- the total deadline, enforced on every socket operation -----------------
#
# A per-read timeout alone lets a server that trickles one byte per read hold a
# thread for hours (http.client reads lines and bodies with many recv calls).
# The sockets below cap each operation's timeout at the time left until the
# deadline of the download running in this thread. Hand-written because no
# maintained library does this on urllib3 2 (advocate needs urllib3<2, unchanged since 2020).

_deadline = threading.local()


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Cap every socket operation of this thread at ``at`` (time.monotonic) while the block runs."""
    _deadline.at = at
    try:
        yield
    finally:
        _deadline.at = None


class _DeadlineMixin:
    _base_timeout: float | None = None

    def settimeout(self, value):
        self._base_timeout = value
        super().settimeout(value)

    def _arm(self) -> None:
        at = getattr(_deadline, "at", None)
        if at is None:
            return
        left = at - time.monotonic()
        if left <= 0:
            raise socket.timeout("the download deadline passed")
        base = self._base_timeout
        super().settimeout(left if base is None else min(base, left))

    def connect(self, address):
        self._arm()
        return super().connect(address)

    def recv(self, *args):
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args, **kwargs):
        self._arm()
        return super().recv_into(*args, **kwargs)

    def send(self, *args):
        self._arm()
        return super().send(*args)

    def sendall(self, *args):
        self._arm()
        return super().sendall(*args)


class DeadlineSocket(_DeadlineMixin, socket.socket):
    """A TCP socket whose every operation ends by the thread's deadline."""


class _DeadlineSSLSocket(_DeadlineMixin, ssl.SSLSocket):
    def read(self, *args, **kwargs):
        self._arm()
        return super().read(*args, **kwargs)

    def do_handshake(self, *args, **kwargs):
        self._arm()
        return super().do_handshake(*args, **kwargs)


class _CheckedConnectionMixin:
    """Connect only to addresses the policy already checked; never resolve the name again."""

    def __init__(self, *args, addresses: Sequence[IPAddress], **kwargs):
        super().__init__(*args, **kwargs)
        self._checked_addresses = tuple(addresses)

    def _new_conn(self) -> socket.socket:
        last: OSError | None = None
        for ip in self._checked_addresses:
            sock = DeadlineSocket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(self.timeout)
                sock.connect((str(ip), self.port))
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        if isinstance(last, socket.timeout):
            raise urllib3.exceptions.ConnectTimeoutError(self, "connect timed out")
        raise urllib3.exceptions.NewConnectionError(self, "could not connect")


class _CheckedHTTPConnection(_CheckedConnectionMixin, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnectionMixin, HTTPSConnection):
    pass


@contextmanager
def network_errors(timed_out: str, failed: str) -> Iterator[None]:
    """Turn a timeout into ``fetch_timeout`` and any other network error into ``fetch_failed``."""
    try:
        yield
    except ItemError:
        raise
    except (socket.timeout, urllib3.exceptions.TimeoutError):
        raise ItemError("fetch_timeout", timed_out) from None
    except (OSError, HTTPException, urllib3.exceptions.HTTPError):
        raise ItemError("fetch_failed", failed) from None


def tls_context(ca_certs: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context whose sockets obey the deadline."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    if ca_certs:
        context.load_verify_locations(cafile=ca_certs)
    else:
        context.load_default_certs()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


def connect(target: Target, addresses: Sequence[IPAddress], *, connect_timeout: float, read_timeout: float,
            tls: ssl.SSLContext) -> HTTPConnection:
    """Open a connection to one of ``addresses`` (TLS for https, verified for ``target.host``)."""
    if target.scheme == "https":
        conn: HTTPConnection = _CheckedHTTPSConnection(
            target.host, target.port, addresses=addresses, timeout=connect_timeout,
            ssl_context=tls, cert_reqs="CERT_REQUIRED")
    else:
        conn = _CheckedHTTPConnection(target.host, target.port, addresses=addresses, timeout=connect_timeout)
    try:
        with network_errors("the image host did not accept a connection in time",
                            "could not connect to the image host"):
            try:
                conn.connect()
            except urllib3.exceptions.NewConnectionError:  # a ConnectTimeoutError subclass, but no timeout
                raise ItemError("fetch_failed", "could not connect to the image host") from None
            except (urllib3.exceptions.SSLError, ssl.SSLError, ssl.CertificateError):
                raise ItemError("fetch_failed", "the image host's TLS certificate could not be verified") from None
    except ItemError:
        conn.close()
        raise
    conn.timeout = read_timeout  # getresponse applies it to the socket
    return conn


def get(conn: HTTPConnection, target: Target, headers: dict, read_timeout: float):
    """Send GET for ``target``'s path and return the response, its body not yet read."""
    with network_errors("the image host did not answer in time", "the image host sent no valid HTTP answer"):
        conn.sock.settimeout(read_timeout)
        conn.request("GET", target.path, headers=headers, preload_content=False, decode_content=True)
        return conn.getresponse()


def read_body(response, max_bytes: int) -> bytes:
    """The response body, refused as ``too_large`` past ``max_bytes`` (declared or actually sent)."""
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise ItemError("too_large", f"the image is larger than {max_bytes} bytes")
    chunks, size = [], 0
    with network_errors("the image host stopped sending", "the download was interrupted or could not be decoded"):
        # Counted after content decoding, so a gzip bomb stops at max_bytes too.
        for chunk in response.stream(_CHUNK, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise ItemError("too_large", f"the image is larger than {max_bytes} bytes")
            chunks.append(chunk)
    return b"".join(chunks)
