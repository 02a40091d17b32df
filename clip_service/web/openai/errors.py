"""Errors under /v1 in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Rendered from the same ``ApiError`` as the service's envelope, so the two
APIs can never disagree about what went wrong. Request validation answers
400 here, as OpenAI does, instead of the service's 422.
"""

from __future__ import annotations

from flask import Response

from ..errors import ApiError
from ..jsonio import json_response

PREFIX = "/v1"

# OpenAI's ``code`` for errors that have no more specific one.
_CODES = {400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
          413: "request_too_large", 415: "unsupported_media_type", 500: "internal_error", 503: "overloaded"}


def _field_path(errors: dict) -> tuple[str | None, str]:
    """The first field error as (path such as "input[1]", message); path None for a rule across fields."""
    name, value = next(iter(errors.items()))
    path = str(name)
    while isinstance(value, dict) and value:
        key, value = next(iter(value.items()))
        path += f"[{key}]" if str(key).isdigit() else f".{key}"
    message = value[0] if isinstance(value, list) and value else str(value)
    return (None if name == "_schema" else path), message


def render_openai(error: ApiError) -> Response:
    """``error`` in OpenAI's shape; the first field error becomes ``param`` and the message."""
    status = 400 if error.status == 422 else error.status
    message, param = error.message, error.param
    if error.errors and param is None:
        param, detail = _field_path(error.errors)
        message = detail if param is None else f"Invalid '{param}': {detail}"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": error.code or _CODES.get(status)}}
    return json_response(body, status=status, headers=error.headers)
