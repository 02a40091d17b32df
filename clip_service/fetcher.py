"""Download image URLs concurrently and decode them; every failure becomes a per-item error.

Network and decoding only: no model, no Flask.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urljoin, urlsplit

import urllib3
from PIL import Image

from .images import ImageDecodeError, decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchError:
    """Why one URL produced no image; ``code`` is part of the API."""

    code: str
    message: str


class _Failure(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.error = FetchError(code, message)


class ImageFetcher:
    """Fetch and decode the images of one request, concurrently and with bounded cost."""

    def __init__(self, *, connect_timeout: float = 3.0, read_timeout: float = 10.0,
                 max_bytes: int = 20 * 1024 * 1024, max_pixels: int = 50_000_000,
                 concurrency: int = 8, max_redirects: int = 3, user_agent: str = "clip-service",
                 draft_size: int | None = None):
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.concurrency = concurrency
        self.max_redirects = max_redirects
        self.draft_size = draft_size
        self.headers = {"User-Agent": user_agent, "Accept": "image/*"}
        self._pool = urllib3.PoolManager(num_pools=32, maxsize=concurrency, retries=False)

    def fetch_images(self, urls: Sequence[str]) -> list[Image.Image | FetchError]:
        """Return, in request order, an RGB image or a FetchError for each URL."""
        unique = list(dict.fromkeys(urls))  # a URL sent twice is downloaded once
        if not unique:
            return []
        workers = min(self.concurrency, len(unique))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
            results = dict(zip(unique, pool.map(self.fetch_image, unique)))
        return [results[url] for url in urls]

    def fetch_image(self, url: str) -> Image.Image | FetchError:
        """Download and decode one URL; never raises."""
        try:
            data = self._download(url)
            return decode_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size)
        except _Failure as failure:
            error = failure.error
        except ImageDecodeError as exc:
            error = FetchError(exc.code, exc.message)
        except Exception:  # a bug here must cost one item, not the request
            log.exception("unexpected error fetching an image")
            error = FetchError("fetch_failed", "the image could not be fetched")
        log.warning("image fetch failed: code=%s host=%s", error.code, _host(url))
        return error

    def _download(self, url: str) -> bytes:
        for _ in range(self.max_redirects + 1):
            _check_url(url)
            try:
                response = self._pool.request(
                    "GET", url, headers=self.headers, timeout=self.timeout,
                    redirect=False, preload_content=False, decode_content=True)
            except urllib3.exceptions.NewConnectionError:
                # Checked first: urllib3 makes it a subclass of ConnectTimeoutError.
                raise _Failure("fetch_failed", "could not connect to the image host") from None
            except urllib3.exceptions.TimeoutError:
                raise _Failure("fetch_timeout", "the image host did not answer in time") from None
            except urllib3.exceptions.HTTPError:
                raise _Failure("fetch_failed", "could not connect to the image host") from None
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise _Failure("fetch_failed", "redirect without a Location header")
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    raise _Failure("upstream_status", f"the image host answered HTTP {response.status}")
                return self._read_body(response)
            finally:
                response.release_conn()
        raise _Failure("too_many_redirects", f"more than {self.max_redirects} redirects")

    def _read_body(self, response) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise _Failure("too_large", f"the image is larger than {self.max_bytes} bytes")
        chunks, size = [], 0
        try:
            for chunk in response.stream(64 * 1024):
                size += len(chunk)
                if size > self.max_bytes:
                    raise _Failure("too_large", f"the image is larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        except urllib3.exceptions.TimeoutError:
            raise _Failure("fetch_timeout", "the image host stopped sending") from None
        except urllib3.exceptions.HTTPError:
            raise _Failure("fetch_failed", "the download was interrupted") from None
        return b"".join(chunks)


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Failure("invalid_url", "the URL cannot be parsed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Failure("invalid_url", "only http and https URLs with a host are accepted")


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
