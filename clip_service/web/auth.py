"""API keys: ``Authorization: Bearer <key>`` on every route except the probes (and, by setting, docs and metrics).

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against
every configured key, so neither a key's length nor which key nearly matched
shows in the timing. Keys and the header are never logged; a request is
known by its key id, the first 8 hex digits of the key's SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Collection, Sequence

from flask import request

from ..ops import metrics, request_context
from .errors import ApiError

log = logging.getLogger(__name__)

# Query parameters clients (wrongly) use for keys: refused with a hint, never read.
KEY_QUERY_PARAMETERS = frozenset({"api_key", "apikey", "key", "token", "access_token"})
_CHALLENGE = 'Bearer realm="clip-service"'


def key_id(key: str) -> str:
    """A short, non-reversible name for ``key``, for logs."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class ApiKeyGate:
    """Refuse requests without a valid key (a before_request hook); open when no key is configured."""

    def __init__(self, keys: Sequence[str], *, public_endpoints: Collection[str] = (),
                 public_blueprints: Collection[str] = (), count_by_key: bool = True):
        self.use_keys(keys)
        self.public_endpoints = set(public_endpoints)
        self.public_blueprints = set(public_blueprints)
        self.count_by_key = count_by_key

    def use_keys(self, keys: Sequence[str]) -> None:
        """Accept exactly ``keys`` from now on (none: the service is open)."""
        self._keys = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str | None:
        """The id of the key in an ``Authorization: Bearer <key>`` value, or None."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, name in self._keys:  # no early exit: every key is compared
            if hmac.compare_digest(digest, known):
                found = name
        return found

    def is_public(self) -> bool:
        endpoint = request.endpoint or ""
        return endpoint in self.public_endpoints or endpoint.partition(".")[0] in self.public_blueprints

    def check(self) -> None:
        """Raise a 401 ApiError unless the request is public or carries a valid key."""
        if not self.enabled or self.is_public():
            return
        header = request.headers.get("Authorization")
        found = self.identify(header)
        if found is not None:
            info = request_context.current()
            if info is not None:
                info.key_id = found
            if self.count_by_key:
                metrics.REQUESTS_BY_KEY.labels(found).inc()
            return
        if header is None and KEY_QUERY_PARAMETERS & set(request.args):
            reason, message = "in_url", "send the API key in the Authorization header (Bearer), never in the URL"
        elif header is None:
            reason, message = "missing", "this service needs an API key: send Authorization: Bearer <key>"
        else:
            reason, message = "invalid", "the API key is not valid (send Authorization: Bearer <key>)"
        metrics.AUTH_FAILURES.labels(reason).inc()
        challenge = _CHALLENGE if reason != "invalid" else _CHALLENGE + ', error="invalid_token"'
        raise ApiError(401, message, headers={"WWW-Authenticate": challenge}, code="invalid_api_key")


def warn_if_open(gate: ApiKeyGate) -> None:
    """Say once, at start, that anyone who can reach the service can use it."""
    if not gate.enabled:
        log.warning("API keys are off: anyone who can reach this service can use it and its image fetcher. "
                    "Set CLIP_API_KEYS or CLIP_API_KEYS_FILE (README: API keys).")
