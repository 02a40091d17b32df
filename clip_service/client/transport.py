"""HTTP to the service: one pooled keep-alive session, retries with backoff and jitter, a deadline per call.

Retried: 429, 502, 503 and 504 answers and connection errors (embedding the
same input twice is harmless, so POSTs are retried too), waiting what
``Retry-After`` asks when it is sent, else an exponentially growing delay
with jitter so many clients do not come back together. Never retried: 401
and 403 (a wrong key stays wrong) and every other answer, which goes back to
the caller. No wait runs past the call's deadline: a Retry-After that would
ends the call at once.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .errors import AuthenticationError, DeadlineExceeded, NotAClipService, ServiceUnavailable, ServiceUnreachable

try:  # a faster JSON codec when it is installed (the service has it); the standard one otherwise
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    def dumps(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

    loads = json.loads

RETRY_STATUSES = frozenset({429, 502, 503, 504})
_AUTH_STATUSES = frozenset({401, 403})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; ``backoff`` doubles per attempt up to ``max_backoff`` (seconds)."""

    retries: int = 8
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            # At least what the service asked, plus a little so clients told the same do not return together.
            return retry_after + random.uniform(0, min(1.0, 0.1 * retry_after))
        ceiling = min(self.max_backoff, self.backoff * 2 ** attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter": grows, but never in step


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_message(response: requests.Response) -> str:
    """The service's message from its error envelope (or OpenAI's shape), else the status line."""
    try:
        body = loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = body.get("message")
        if message is None and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        if isinstance(message, str) and message:
            return message
    return f"HTTP {response.status_code} {response.reason or ''}".strip()


class Transport:
    """A pooled session to ``base_url`` that sends JSON and retries as the module docstring says."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float, connect_timeout: float,
                 retry: RetryPolicy, pool_size: int, user_agent: str):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = retry
        self.session = requests.Session()
        # One pool per host, with room for every thread the caller runs at once; without
        # enough room requests opens and drops extra connections instead of reusing them.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": user_agent, "Accept": "application/json"})
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        self.session.close()

    def get_json(self, path: str, deadline: float, *, retry_connection_errors: bool = True) -> Any:
        """GET ``path`` and return its JSON; anything but 200 with JSON means this is not the service."""
        response = self.send("GET", path, None, deadline, retry_connection_errors=retry_connection_errors)
        if response.status_code != 200:
            raise NotAClipService(f"GET {self.base_url}{path} answered {response.status_code} "
                                  f"{response.reason or ''}: is {self.base_url} a clip-service?")
        try:
            return loads(response.content)
        except ValueError:
            raise NotAClipService(f"GET {self.base_url}{path} did not answer JSON; "
                                  f"is {self.base_url} a clip-service?") from None

    def post_json(self, path: str, body: Any, deadline: float) -> requests.Response:
        """POST ``body`` as JSON; the answer once it is neither retryable nor an auth failure."""
        return self.send("POST", path, dumps(body), deadline)

    def send(self, method: str, path: str, data: bytes | None, deadline: float, *,
             retry_connection_errors: bool = True) -> requests.Response:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"} if data is not None else None
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{method} {url}: no answer within the call's deadline")
            try:
                response = self.session.request(
                    method, url, data=data, headers=headers,
                    timeout=(min(self.connect_timeout, remaining), min(self.timeout, remaining)))
            except requests.exceptions.InvalidURL as exc:
                raise ServiceUnreachable(f"{url} is not a valid URL: {exc}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if not retry_connection_errors and not isinstance(exc, requests.Timeout):
                    raise ServiceUnreachable(f"cannot reach {self.base_url}: {_reason(exc)}") from None
                cause, retry_after = f"cannot reach {self.base_url}: {_reason(exc)}", None
            else:
                if response.status_code in _AUTH_STATUSES:
                    raise AuthenticationError(f"{self.base_url} refused the API key "
                                              f"({response.status_code}): {error_message(response)}")
                if response.status_code not in RETRY_STATUSES:
                    return response
                cause = f"{method} {url} answered {response.status_code}: {error_message(response)}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                response.close()  # back to the pool before the wait
            if attempt >= self.retry.retries:
                raise ServiceUnavailable(f"{cause} (gave up after {attempt + 1} attempts)")
            wait = self.retry.delay(attempt, retry_after)
            if time.monotonic() + wait >= deadline:
                raise DeadlineExceeded(f"{cause}; the next try (in {wait:.1f} s) would be past the call's deadline")
            time.sleep(wait)
            attempt += 1


def _reason(exc: Exception) -> str:
    # requests nests urllib3's reason several levels deep; the innermost is the readable one.
    inner: BaseException = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None)
    text = str(reason if reason is not None else inner)
    # urllib3 prefixes its connection object's repr ("HTTPConnection(host=..., port=...): ").
    return text.split("): ", 1)[-1] if text.startswith(("HTTPConnection(", "HTTPSConnection(", "<")) else text
