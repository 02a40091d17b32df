"""The one JSON error envelope: ``{"code", "status", "message", "errors"}``."""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response, current_app
from werkzeug.exceptions import HTTPException

from ..model.batching import Overloaded
from .jsonio import json_response

log = logging.getLogger(__name__)

_LOCATIONS = {"json", "form", "files", "query", "headers", "cookies", "view_args", "path"}


def error_response(status: int, message: str | None = None, errors=None, headers=None) -> Response:
    """Build the service's error body for ``status``: every key always present."""
    phrase = HTTPStatus(status).phrase
    body = {"code": status, "status": phrase, "message": message or phrase, "errors": errors or {}}
    return json_response(body, status=status, headers=headers)


def _handle_http_exception(error: HTTPException) -> Response:
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
    return error_response(error.code or 500, message or error.description, errors, headers)


def _handle_unexpected(error: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error")
    return error_response(500, "internal error")


def _handle_overloaded(error: Overloaded) -> Response:
    # The worker's batch queue is full: shed load instead of queueing without bound.
    return error_response(503, "the service is busy; retry shortly", headers={"Retry-After": "1"})


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Overloaded, _handle_overloaded)
    app.register_error_handler(Exception, _handle_unexpected)
