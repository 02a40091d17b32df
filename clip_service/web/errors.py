"""Errors as one neutral value, rendered in the shape of the API that was called.

Every failure a view raises or Flask reports becomes an ``ApiError``
(``to_api_error``); the renderer registered for the request's path prefix
turns it into a response: the service's envelope ``{"code", "status",
"message", "errors"}`` by default, OpenAI's shape under /v1.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Callable

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from ..model.batching import Overloaded
from .jsonio import json_response

log = logging.getLogger(__name__)

_LOCATIONS = {"json", "form", "files", "query", "headers", "cookies", "view_args", "path"}


class ApiError(Exception):
    """An error answer: status, message, field-by-field ``errors``, headers, and an optional reason code.

    ``code`` (e.g. ``model_not_found``) and ``param`` (the field at fault) are
    for the shapes that carry them; the envelope shows ``errors`` instead.
    """

    def __init__(self, status: int, message: str | None = None, *, errors: dict | None = None,
                 headers: dict | None = None, code: str | None = None, param: str | None = None):
        self.status = status
        self.message = message or HTTPStatus(status).phrase
        self.errors = errors or {}
        self.headers = headers or {}
        self.code = code
        self.param = param
        super().__init__(self.message)


def to_api_error(error: Exception) -> ApiError:
    """The ``ApiError`` for any exception that reached Flask."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, HTTPException):
        return _from_http_exception(error)
    if isinstance(error, Overloaded):
        # The worker's batch queue is full: shed load instead of queueing without bound.
        return ApiError(503, "the service is busy; retry shortly", headers={"Retry-After": "1"})
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error", exc_info=error)
    return ApiError(500, "internal error")


def _from_http_exception(error: HTTPException) -> ApiError:
    data = getattr(error, "data", None) or {}
    # webargs puts validation failures in data["messages"] keyed by location.
    errors = data.get("errors") or data.get("messages")
    if isinstance(errors, dict) and len(errors) == 1 and set(errors) <= _LOCATIONS:
        errors = next(iter(errors.values()))
    if not isinstance(errors, dict):
        errors = {"_schema": errors} if errors else {}
    message = data.get("message")
    if message is None and error.code == 413:
        message = f"the request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    if message is None and error.code == 422:
        message = "the request is not valid; see errors"
    headers = dict(data.get("headers") or {})
    if error.code == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return ApiError(error.code or 500, message or error.description, errors=errors, headers=headers)


def envelope(error: ApiError) -> dict:
    """The service's error body, every key always present (no Flask: the Gunicorn worker writes it too)."""
    return {"code": error.status, "status": HTTPStatus(error.status).phrase, "message": error.message,
            "errors": error.errors}


def render_envelope(error: ApiError) -> Response:
    """The service's error answer: the envelope as JSON, with the error's status and headers."""
    return json_response(envelope(error), status=error.status, headers=error.headers)


Renderer = Callable[[ApiError], Response]


class ErrorRenderers:
    """Which renderer answers for which path prefix; the longest matching prefix wins."""

    def __init__(self, default: Renderer = render_envelope):
        self.default = default
        self._by_prefix: list[tuple[str, Renderer]] = []

    def add(self, prefix: str, renderer: Renderer) -> None:
        self._by_prefix.append((prefix.rstrip("/"), renderer))
        self._by_prefix.sort(key=lambda pair: -len(pair[0]))

    def render(self, error: ApiError) -> Response:
        path = request.path
        for prefix, renderer in self._by_prefix:
            if path == prefix or path.startswith(prefix + "/"):
                return renderer(error)
        return self.default(error)


def register_error_handlers(app: Flask) -> ErrorRenderers:
    """Answer every exception through the renderers (kept in app.extensions for blueprints to add theirs).

    Call after flask-smorest's Api is created: this replaces its HTTPException handler.
    """
    renderers = ErrorRenderers()
    app.extensions["clip_error_renderers"] = renderers

    def handle(error: Exception) -> Response:
        return renderers.render(to_api_error(error))

    app.register_error_handler(HTTPException, handle)
    app.register_error_handler(Exception, handle)
    return renderers
