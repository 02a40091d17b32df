"""Turn a request's image sources into results, concurrently and with bounded cost.

Network only, no model and no web: a source is an http(s) URL (downloaded),
a ``data:`` URI or an uploaded file (read in place); its bytes are handed to
the caller's ``then`` (decoding, preprocessing) in the same thread. Every
failure becomes that item's ``ItemError`` value. Every URL and every redirect
hop passes ``UrlPolicy``; the host name is resolved once, every address it
resolves to is checked, and the connection goes to one of those checked
addresses (images/http.py), so DNS rebinding and numeric spellings cannot
reach a blocked address.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import BinaryIO, Callable, ContextManager, Sequence, TypeVar
from urllib.parse import urljoin, urlsplit

from PIL import Image

from ..process_local import PerProcess
from . import http
from .decoding import DecodeBudget, decode_image, decoded
from .errors import ItemError
from .limits import FetchLimits
from .sources import data_uri_bytes, is_data_uri, read_upload
from .url_policy import Allowlist, IPAddress, Target, UrlPolicy, parse_ports

log = logging.getLogger(__name__)

# (host, port) -> the addresses the name resolves to, as strings.
Resolver = Callable[[str, int], Sequence[str]]
# A URL or data: URI, an uploaded file, or an error the caller already found.
Source = str | BinaryIO | ItemError
T = TypeVar("T")

_REDIRECTS = (301, 302, 303, 307, 308)


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the operating system's resolver (getaddrinfo)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class ImageFetcher:
    """Fetch the images of one request, concurrently and with bounded cost."""

    def __init__(self, limits: FetchLimits | None = None, *, draft_size: int | None = None,
                 resolver: Resolver | None = None, ca_certs: str | None = None, **overrides):
        # Keyword overrides of single limits keep tests and one-off callers short.
        self.limits = limits = replace(limits or FetchLimits(), **overrides)
        # Decode big JPEGs at a reduced scale that still covers this side (the model's input), unless told not to.
        self.draft_size = draft_size if limits.jpeg_draft else None
        self.headers = {"User-Agent": limits.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"}
        self.policy = UrlPolicy(
            allowed_ports=parse_ports(limits.ports) if isinstance(limits.ports, str) else frozenset(limits.ports),
            allowlist=Allowlist.parse(limits.allow) if isinstance(limits.allow, str) else limits.allow,
            max_url_chars=limits.max_url_chars)
        self.budget = DecodeBudget(limits.decode_budget_mb << 20)
        self.resolver = resolver or system_resolver
        self._tls = http.tls_context(ca_certs)
        # Per-worker bound on downloads in flight across all requests.
        self._slots = PerProcess(lambda: threading.BoundedSemaphore(limits.worker_concurrency))
        # Called as on_fetched(bytes, seconds) for each image downloaded and handled;
        # the web layer hangs its metrics here.
        self.on_fetched: Callable[[int, float], None] | None = None

    # --- a request's sources ----------------------------------------------------

    def decoding(self, data: bytes, deadline: float = math.inf) -> ContextManager[Image.Image]:
        """Decode image bytes with this fetcher's limits (pixels, formats, JPEG draft size, the decode budget).

        The image is yielded while its memory is held in the budget: preprocess
        it inside the block, and let it go.
        """
        return decoded(data, max_pixels=self.limits.max_image_pixels, draft_size=self.draft_size,
                       budget=self.budget, deadline=deadline)

    def fetch_images(self, sources: Sequence[Source]) -> list[Image.Image | ItemError]:
        """Return, in order, an RGB image or an ItemError for each source (no decode budget: for tests and tools)."""
        return self.fetch_all(sources, lambda data, deadline: decode_image(
            data, max_pixels=self.limits.max_image_pixels, draft_size=self.draft_size))

    def fetch_all(self, sources: Sequence[Source], then: Callable[[bytes, float], T]) -> list[T | ItemError]:
        """Return, in order, ``then(bytes, deadline)`` or an ItemError for each source; ``then`` may raise ItemError.

        Sources run ``concurrency`` at a time, all within the request deadline;
        a URL sent twice is fetched once.
        """
        keys = [source if isinstance(source, str) else id(source) for source in sources]
        unique = dict(zip(keys, sources))
        if not unique:
            return []
        request_deadline = time.monotonic() + self.limits.request_timeout
        pool = ThreadPoolExecutor(max_workers=min(self.limits.concurrency, len(unique)), thread_name_prefix="fetch")
        try:
            # Each item runs in a copy of the caller's context, so its log lines
            # carry the request id the web layer keeps in a context variable.
            futures = {key: pool.submit(contextvars.copy_context().run, self.fetch_one, source, then,
                                        request_deadline)
                       for key, source in unique.items()}
            # A little grace so items cut off at the deadline report their own error.
            done, _ = wait(futures.values(), timeout=max(0.0, request_deadline - time.monotonic()) + 0.5)
        finally:
            # Never wait for stragglers: their sockets time out on their own at the deadline.
            pool.shutdown(wait=False, cancel_futures=True)
        results: dict = {}
        for key, future in futures.items():
            if future in done:
                results[key] = future.result()
            else:
                results[key] = ItemError(
                    "fetch_timeout", f"the images of this request took longer than {self.limits.request_timeout:g} s")
                log.warning("image fetch failed: code=fetch_timeout host=%s", _host(unique[key]))
        return [results[key] for key in keys]

    def fetch_one(self, source: Source, then: Callable[[bytes, float], T],
                  request_deadline: float = math.inf) -> T | ItemError:
        """Fetch one source within its deadline and hand its bytes to ``then``; never raises."""
        started = time.monotonic()
        try:
            if isinstance(source, ItemError):
                raise source
            if not isinstance(source, str):  # an uploaded file
                return then(read_upload(source, self.limits.max_bytes), request_deadline)
            if is_data_uri(source):  # the image is in the request: never a network request
                return then(data_uri_bytes(source, self.limits.max_bytes), request_deadline)
            deadline = min(started + self.limits.total_timeout, request_deadline)
            slots = self._slots.get()
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ItemError("fetch_timeout", "the service was too busy to download the image in time")
            try:
                data = self._download(source, deadline)
                # Still holding the slot: downloaded bytes that wait for the decode budget are
                # bounded by CLIP_FETCH_WORKER_CONCURRENCY, like the bytes being downloaded.
                result = then(data, request_deadline)
            finally:
                slots.release()
            if self.on_fetched is not None:
                self.on_fetched(len(data), time.monotonic() - started)
            return result
        except ItemError as exc:
            error = exc
        except Exception:  # a bug here must cost one item, not the request
            log.exception("unexpected error fetching an image")
            error = ItemError("fetch_failed", "the image could not be fetched")
        log.warning("image fetch failed: code=%s host=%s", error.code, _host(source))
        return error

    # --- one download, following redirects -------------------------------------

    def _download(self, url: str, deadline: float) -> bytes:
        try:
            with http.deadline(deadline):
                return self._follow(url)
        except ItemError as exc:
            if exc.code in ("fetch_failed", "fetch_timeout") and time.monotonic() >= deadline:
                raise ItemError("fetch_timeout",
                                f"the image took longer than {self.limits.total_timeout:g} s to download") from None
            raise

    def _follow(self, url: str) -> bytes:
        for hop in range(self.limits.max_redirects + 1):
            try:
                target = self.policy.check_url(url)
                addresses = self._resolve(target)
            except ItemError as exc:
                if hop and exc.code in ("invalid_url", "blocked_url"):
                    raise ItemError(exc.code, f"a redirect led to a URL that is refused: {exc.message}") from None
                raise
            conn = http.connect(target, addresses, connect_timeout=self.limits.connect_timeout,
                                read_timeout=self.limits.read_timeout, tls=self._tls)
            try:
                response = http.get(conn, target, self.headers, self.limits.read_timeout)
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise ItemError("fetch_failed", "redirect without a Location header")
                    url = urljoin(target.url, location.strip())
                    continue
                if response.status != 200:
                    raise ItemError("upstream_status", f"the image host answered HTTP {response.status}")
                return http.read_body(response, self.limits.max_bytes)
            finally:
                conn.close()
        raise ItemError("too_many_redirects", f"more than {self.limits.max_redirects} redirects")

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
                raise ItemError("fetch_failed", "the host name could not be resolved") from None
            if not addresses:
                raise ItemError("fetch_failed", "the host name could not be resolved")
        for ip in addresses:  # one bad answer blocks the name: the connection could pick any
            self.policy.check_address(target, ip)
        return addresses


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


def _host(source: Source) -> str:
    if isinstance(source, ItemError):
        return "(refused)"
    if not isinstance(source, str):
        return "(upload)"
    if is_data_uri(source):
        return "(data URI)"
    try:
        return urlsplit(source).hostname or "?"
    except ValueError:
        return "?"
