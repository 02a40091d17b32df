"""What can go wrong with a whole call (a failed item is a ``FailedItem`` value, never one of these)."""

from __future__ import annotations


class ClipClientError(Exception):
    """A call to the service failed as a whole; ``str()`` is one line for a person."""


class ServiceUnreachable(ClipClientError):
    """No HTTP answer from the base URL (refused, unknown host, TLS failure)."""


class NotAClipService(ClipClientError):
    """Something answered, but not as clip-service does (wrong URL or path)."""


class AuthenticationError(ClipClientError):
    """The service refused the API key (401/403): retrying cannot help."""


class ServiceUnavailable(ClipClientError):
    """The service stayed busy or unreachable through every retry."""


class DeadlineExceeded(ClipClientError):
    """The call's total deadline passed (or a Retry-After would pass it)."""


class RequestRejected(ClipClientError):
    """The service refused the request itself (4xx other than 401/403/413/429); ``status`` says which."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
