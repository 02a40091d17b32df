"""Download image URLs concurrently and decode them; every failure becomes a per-item error.

Network and decoding only: no model, no Flask. Every URL and every redirect hop
passes ``UrlPolicy``; the host name is resolved once, every address it resolves
to is checked, and the socket connects to one of those checked addresses (never
to the name again), so DNS rebinding and numeric spellings cannot reach a
blocked address. TLS still sends SNI and verifies the certificate for the name.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import os
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from http.client import HTTPException
from typing import Callable, Sequence
from urllib.parse import urljoin, urlsplit

import urllib3
from PIL import Image
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_ import create_urllib3_context

from .decoding import ImageDecodeError, decode_image
from .sources import LocalImages, is_data_uri
from .url_policy import Allowlist, IPAddress, PolicyError, Target, UrlPolicy, parse_ports

log = logging.getLogger(__name__)

# (host, port) -> the addresses the name resolves to, as strings.
Resolver = Callable[[str, int], Sequence[str]]

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchError:
    """Why one URL produced no image; ``code`` is part of the API."""

    code: str
    message: str


class _Failure(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.error = FetchError(code, message)


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the operating system's resolver (getaddrinfo)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


# --- the total deadline, enforced on every socket operation -----------------
#
# A per-read timeout alone lets a server that trickles one byte per read hold a
# thread for hours (http.client reads lines and bodies with many recv calls).
# The sockets below cap each operation's timeout at the time left until the
# deadline of the download running in this thread. Hand-written because no
# maintained library does this on urllib3 2 (advocate needs urllib3<2, unchanged since 2020).

_deadline = threading.local()


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


class _DeadlineSocket(_DeadlineMixin, socket.socket):
    pass


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
            sock = _DeadlineSocket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
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


class ImageFetcher:
    """Fetch and decode the images of one request, concurrently and with bounded cost."""

    def __init__(self, *, connect_timeout: float = 3.0, read_timeout: float = 10.0,
                 total_timeout: float = 20.0, request_timeout: float = 30.0,
                 max_bytes: int = 20 * 1024 * 1024, max_pixels: int = 50_000_000,
                 concurrency: int = 8, worker_concurrency: int = 16, max_redirects: int = 3,
                 user_agent: str = "clip-service", draft_size: int | None = None,
                 allowed_ports: str | Sequence[int] = (80, 443), allow: str | Allowlist = "",
                 max_url_chars: int = 2048, resolver: Resolver | None = None,
                 ca_certs: str | None = None):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.request_timeout = request_timeout
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.concurrency = concurrency
        self.worker_concurrency = worker_concurrency
        self.max_redirects = max_redirects
        self.draft_size = draft_size
        self.local = LocalImages(max_bytes=max_bytes, max_pixels=max_pixels, draft_size=draft_size)
        self.headers = {"User-Agent": user_agent, "Accept": "image/*", "Accept-Encoding": "identity"}
        ports = parse_ports(allowed_ports) if isinstance(allowed_ports, str) else frozenset(allowed_ports)
        allowlist = Allowlist.parse(allow) if isinstance(allow, str) else allow
        self.policy = UrlPolicy(allowed_ports=ports, allowlist=allowlist, max_url_chars=max_url_chars)
        self.resolver = resolver or system_resolver
        self._ssl_context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        if ca_certs:
            self._ssl_context.load_verify_locations(cafile=ca_certs)
        else:
            self._ssl_context.load_default_certs()
        self._ssl_context.sslsocket_class = _DeadlineSSLSocket
        # Per-worker bound on downloads in flight across all requests; made in the
        # worker on first use, never in the Gunicorn master before the fork.
        self._slots: threading.BoundedSemaphore | None = None
        self._slots_pid = 0
        self._slots_lock = threading.Lock()
        # Called as on_fetched(bytes, seconds) for each image fetched and decoded;
        # the web layer hangs its metrics here.
        self.on_fetched: Callable[[int, float], None] | None = None

    # --- the request ----------------------------------------------------------

    def fetch_images(self, urls: Sequence[str]) -> list[Image.Image | FetchError]:
        """Return, in request order, an RGB image or a FetchError for each URL."""
        unique = list(dict.fromkeys(urls))  # a URL sent twice is downloaded once
        if not unique:
            return []
        request_deadline = time.monotonic() + self.request_timeout
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(unique)), thread_name_prefix="fetch")
        try:
            # Each download runs in a copy of the caller's context, so its log lines
            # carry the request id the web layer keeps in a context variable.
            futures = {url: pool.submit(contextvars.copy_context().run, self.fetch_image, url, request_deadline)
                       for url in unique}
            # A little grace so items cut off at the deadline report their own error.
            done, _ = wait(futures.values(), timeout=max(0.0, request_deadline - time.monotonic()) + 0.5)
        finally:
            # Never wait for stragglers: their sockets time out on their own at the deadline.
            pool.shutdown(wait=False, cancel_futures=True)
        results: dict[str, Image.Image | FetchError] = {}
        for url, future in futures.items():
            if future in done:
                results[url] = future.result()
            else:
                results[url] = FetchError(
                    "fetch_timeout", f"the images of this request took longer than {self.request_timeout:g} s")
                log.warning("image fetch failed: code=fetch_timeout host=%s", _host(url))
        return [results[url] for url in urls]

    def fetch_image(self, url: str, request_deadline: float = math.inf) -> Image.Image | FetchError:
        """Download and decode one URL within its deadline; never raises."""
        started = time.monotonic()
        deadline = min(started + self.total_timeout, request_deadline)
        try:
            if is_data_uri(url):  # the image is in the request: decoded here, never a network request
                return self.local.from_data_uri(url)
            data = self._download_with_slot(url, deadline)
            image = decode_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size)
            if self.on_fetched is not None:
                self.on_fetched(len(data), time.monotonic() - started)
            return image
        except _Failure as failure:
            error = failure.error
        except PolicyError as exc:
            error = FetchError(exc.code, exc.message)
        except ImageDecodeError as exc:
            error = FetchError(exc.code, exc.message)
        except Exception:  # a bug here must cost one item, not the request
            log.exception("unexpected error fetching an image")
            error = FetchError("fetch_failed", "the image could not be fetched")
        log.warning("image fetch failed: code=%s host=%s", error.code, _host(url))
        return error

    def _worker_slots(self) -> threading.BoundedSemaphore:
        with self._slots_lock:
            if self._slots is None or self._slots_pid != os.getpid():
                self._slots = threading.BoundedSemaphore(self.worker_concurrency)
                self._slots_pid = os.getpid()
            return self._slots

    def _download_with_slot(self, url: str, deadline: float) -> bytes:
        slots = self._worker_slots()
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _Failure("fetch_timeout", "the service was too busy to download the image in time")
        _deadline.at = deadline
        try:
            return self._download(url)
        except _Failure as failure:
            if failure.error.code in ("fetch_failed", "fetch_timeout") and time.monotonic() >= deadline:
                raise self._timeout() from None
            raise
        finally:
            _deadline.at = None
            slots.release()

    def _timeout(self) -> _Failure:
        return _Failure("fetch_timeout", f"the image took longer than {self.total_timeout:g} s to download")

    # --- one download, following redirects -------------------------------------

    def _download(self, url: str) -> bytes:
        for hop in range(self.max_redirects + 1):
            try:
                target = self.policy.check_url(url)
                addresses = self._resolve(target)
            except PolicyError as exc:
                if hop:
                    raise PolicyError(exc.code, f"a redirect led to a URL that is refused: {exc.message}") from None
                raise
            conn = self._connect(target, addresses)
            try:
                response = self._get(conn, target)
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise _Failure("fetch_failed", "redirect without a Location header")
                    url = urljoin(target.url, location.strip())
                    continue
                if response.status != 200:
                    raise _Failure("upstream_status", f"the image host answered HTTP {response.status}")
                return self._read_body(response)
            finally:
                conn.close()
        raise _Failure("too_many_redirects", f"more than {self.max_redirects} redirects")

    def _resolve(self, target: Target) -> list[IPAddress]:
        """Every address ``target.host`` resolves to, each checked by the policy."""
        literal = _ip_literal(target.host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                answers = self.resolver(target.host, target.port)
                addresses = [ipaddress.ip_address(str(a).split("%")[0]) for a in answers]
            except (OSError, UnicodeError, ValueError):
                raise _Failure("fetch_failed", "the host name could not be resolved") from None
            if not addresses:
                raise _Failure("fetch_failed", "the host name could not be resolved")
        for ip in addresses:  # one bad answer blocks the name: the connection could pick any
            self.policy.check_address(target, ip)
        return addresses

    def _connect(self, target: Target, addresses: list[IPAddress]) -> HTTPConnection:
        if target.scheme == "https":
            conn: HTTPConnection = _CheckedHTTPSConnection(
                target.host, target.port, addresses=addresses, timeout=self.connect_timeout,
                ssl_context=self._ssl_context, cert_reqs="CERT_REQUIRED")
        else:
            conn = _CheckedHTTPConnection(target.host, target.port, addresses=addresses,
                                          timeout=self.connect_timeout)
        try:
            conn.connect()
        except urllib3.exceptions.NewConnectionError:  # checked first: urllib3 makes it a ConnectTimeoutError
            conn.close()
            raise _Failure("fetch_failed", "could not connect to the image host") from None
        except (urllib3.exceptions.ConnectTimeoutError, socket.timeout):
            conn.close()
            raise _Failure("fetch_timeout", "the image host did not accept a connection in time") from None
        except (urllib3.exceptions.SSLError, ssl.SSLError, ssl.CertificateError):
            conn.close()
            raise _Failure("fetch_failed", "the image host's TLS certificate could not be verified") from None
        except (urllib3.exceptions.HTTPError, OSError):
            conn.close()
            raise _Failure("fetch_failed", "could not connect to the image host") from None
        conn.timeout = self.read_timeout  # getresponse applies it to the socket
        return conn

    def _get(self, conn: HTTPConnection, target: Target):
        try:
            conn.sock.settimeout(self.read_timeout)
            conn.request("GET", target.path, headers=self.headers, preload_content=False, decode_content=True)
            return conn.getresponse()
        except (socket.timeout, urllib3.exceptions.TimeoutError):
            raise _Failure("fetch_timeout", "the image host did not answer in time") from None
        except (OSError, HTTPException, urllib3.exceptions.HTTPError):
            raise _Failure("fetch_failed", "the image host sent no valid HTTP answer") from None

    def _read_body(self, response) -> bytes:
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise _Failure("too_large", f"the image is larger than {self.max_bytes} bytes")
        chunks, size = [], 0
        try:
            # Counted after content decoding, so a gzip bomb stops at max_bytes too.
            for chunk in response.stream(_CHUNK, decode_content=True):
                size += len(chunk)
                if size > self.max_bytes:
                    raise _Failure("too_large", f"the image is larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        except (socket.timeout, urllib3.exceptions.TimeoutError):
            raise _Failure("fetch_timeout", "the image host stopped sending") from None
        except (OSError, HTTPException, urllib3.exceptions.HTTPError):
            raise _Failure("fetch_failed", "the download was interrupted or could not be decoded") from None
        return b"".join(chunks)


def _ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, including the forms inet_aton accepts (127.1, 0x7f000001, 017700000001)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def _host(url: str) -> str:
    if is_data_uri(url):
        return "(data URI)"
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
