"""The one JSON error envelope: ``{"code", "status", "message", "errors"}``."""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from .jsonio import json_response

log = logging.getLogger(__name__)


def error_response(status: int, message: str | None = None, errors=None, headers=None) -> Response:
    """Build the service's error body for ``status``."""
    body = {"code": status, "status": HTTPStatus(status).phrase}
    if message:
        body["message"] = message
    if errors:
        body["errors"] = errors
    return json_response(body, status=status, headers=headers)


def _handle_http_exception(error: HTTPException) -> Response:
    data = getattr(error, "data", None) or {}
    # webargs puts validation failures in data["messages"] keyed by location.
    errors = data.get("errors") or data.get("messages")
    if isinstance(errors, dict) and set(errors) <= {"json", "form", "files", "query"} and len(errors) == 1:
        errors = next(iter(errors.values()))
    message = data.get("message") or error.description
    headers = dict(data.get("headers") or {})
    if error.code == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return error_response(error.code or 500, message, errors, headers)


def _handle_unexpected(error: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error")
    return error_response(500, "internal error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
