"""HTTP to the service: one pooled keep-alive session, retries with backoff and jitter, a deadline per call.

What is retried and how long to wait is urllib3's ``Retry`` (``RetryPolicy``):
429, 502, 503 and 504 answers and connection errors, for every method
(embedding the same input twice is harmless, so POSTs are retried too),
waiting what ``Retry-After`` asks when it is sent, else an exponentially
growing delay with jitter so many clients do not come back together. Never
retried: 401 and 403 (a wrong key stays wrong) and every other answer, which
goes back to the caller. No wait runs past the call's deadline: a Retry-After
that would ends the call at once.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, InvalidHeader, MaxRetryError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

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


class RetryPolicy(Retry):
    """urllib3's ``Retry`` as the service wants it; ``make()`` builds one, ``wait()`` says how long before a retry."""

    @classmethod
    def make(cls, retries: int = 8, backoff: float = 0.5, max_backoff: float = 30.0) -> RetryPolicy:
        """Up to ``retries`` retries; ``backoff`` seconds, doubling per retry up to ``max_backoff``."""
        return cls(total=retries, status_forcelist=RETRY_STATUSES, allowed_methods=None,  # None: every method
                   backoff_factor=backoff, backoff_max=max_backoff)

    def get_backoff_time(self) -> float:
        """Seconds to wait before this retry: between half and all of a ceiling that doubles per retry."""
        # "Equal jitter": urllib3's own formula retries the first time at once and adds its jitter on
        # top; this one waits from the first retry on, and never in step with other clients.
        if not self.history:
            return 0.0
        ceiling = min(self.backoff_max, self.backoff_factor * 2 ** (len(self.history) - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def wait(self, response: BaseHTTPResponse | None) -> float:
        """Seconds to wait before the next try: what ``Retry-After`` asks, plus a little, else the backoff."""
        try:
            asked = self.get_retry_after(response) if response is not None else None
        except InvalidHeader:  # unreadable: as if it were not there
            asked = None
        if asked is None:
            return self.get_backoff_time()
        # A little more than asked, so clients told the same do not return together.
        return asked + random.uniform(0, min(1.0, 0.1 * asked))


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
        """Send until an answer that is not retried, within ``deadline`` (a ``time.monotonic()`` value)."""
        # The loop is here, not in urllib3 (which retries inside one call, with one timeout for every
        # try and sleeps that know no deadline), so that each try's timeout and each wait stop at the
        # call's deadline; what to retry and how long to wait is the policy's.
        url = self.base_url + path
        headers = {"Content-Type": "application/json"} if data is not None else None
        retry = self.retry if retry_connection_errors else self.retry.new(connect=0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{method} {url}: no answer within the call's deadline")
            answer, error = None, None
            try:
                response = self.session.request(
                    method, url, data=data, headers=headers,
                    timeout=(min(self.connect_timeout, remaining), min(self.timeout, remaining)))
            except requests.exceptions.InvalidURL as exc:
                raise ServiceUnreachable(f"{url} is not a valid URL: {exc}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                cause, error = f"cannot reach {self.base_url}: {_reason(exc)}", _urllib3_error(exc)
            else:
                if response.status_code in _AUTH_STATUSES:
                    raise AuthenticationError(f"{self.base_url} refused the API key "
                                              f"({response.status_code}): {error_message(response)}")
                if not retry.is_retry(method, response.status_code):
                    return response
                cause = f"{method} {url} answered {response.status_code}: {error_message(response)}"
                answer = response.raw
                response.close()  # back to the pool before the wait
            try:
                retry = retry.increment(method, url, response=answer, error=error)
            except MaxRetryError as gave_up:
                # urllib3's connection errors, refused ones included, are ConnectTimeoutErrors.
                if not retry_connection_errors and isinstance(gave_up.reason, ConnectTimeoutError):
                    raise ServiceUnreachable(cause) from None
                raise ServiceUnavailable(f"{cause} (gave up after {len(retry.history) + 1} attempts)") from None
            wait = retry.wait(answer)
            if time.monotonic() + wait >= deadline:
                raise DeadlineExceeded(f"{cause}; the next try (in {wait:.1f} s) would be past the call's deadline")
            time.sleep(wait)


def _urllib3_error(exc: requests.RequestException) -> Exception:
    """The urllib3 error inside requests' exception, which is what ``Retry`` classifies."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    return inner.reason if isinstance(inner, MaxRetryError) and isinstance(inner.reason, Exception) else inner


def _reason(exc: Exception) -> str:
    # requests nests urllib3's reason several levels deep; the innermost is the readable one.
    inner: BaseException = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None)
    text = str(reason if reason is not None else inner)
    # urllib3 prefixes its connection object's repr ("HTTPConnection(host=..., port=...): ").
    return text.split("): ", 1)[-1] if text.startswith(("HTTPConnection(", "HTTPSConnection(", "<")) else text
